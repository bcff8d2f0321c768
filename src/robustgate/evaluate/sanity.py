"""The sanity checks AutoAttack's users rely on, run on a composed classifier.

- A gradient-free attack (Square) judged by the deployed decision: its robust accuracy is never
  below the gradient attack's by more than the sampling error; where it is, the gradient attack
  is masked (its objectives give no useful gradient) and its figure is not to be trusted.
- Robust accuracy under the gradient attack falls towards 0 as eps grows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from robustgate.attacks import check_robustness, make_attack
from robustgate.compose import ComposedClassifier
from robustgate.evaluate.adaptive import AdaptiveAttack
from robustgate.evaluate.statistics import clopper_pearson, paired_lower
from robustgate.models.modes import predict_logits
from robustgate.threat import ThreatModel


class DeployedLogits(nn.Module):
    """The composition as a model for attacks that only query it: the logits of the model that
    the deployed system routes each input to (its real selector decision), so the answer is the
    composition's and the margin is that of the answering model."""

    def __init__(self, composed: ComposedClassifier) -> None:
        super().__init__()
        self.composed = composed
        self.models = nn.ModuleList(model for _, model in composed.named_models())
        self.input_shape = getattr(composed.core, "input_shape", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, routes = self.composed.predict(x)
        routes = routes.to(x.device)
        logits = None
        for route, (_, model) in enumerate(self.composed.named_models()):
            chosen = routes == route
            if bool(chosen.any()):
                answer = predict_logits(model, x[chosen])
                if logits is None:
                    logits = torch.zeros(len(x), answer.shape[1], device=x.device)
                logits[chosen] = answer.to(logits.dtype)
        return logits if logits is not None else predict_logits(self.composed.core, x)


def _held(predictions: torch.Tensor, robust: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Robust and accurate, per input."""
    return (predictions.cpu() == y.cpu()) & robust.cpu()


def _summary(held: torch.Tensor) -> dict[str, Any]:
    return {"robust_accuracy": float(held.float().mean()),
            "interval": clopper_pearson(int(held.sum()), len(held)), "held": int(held.sum())}


def sanity_checks(composed: ComposedClassifier, x: torch.Tensor, y: torch.Tensor,
                  threat: ThreatModel, attack: AdaptiveAttack, square_queries: int = 1000,
                  eps_factors: Sequence[float] = (2.0, 4.0, 8.0), seed: int = 0,
                  batch_size: int = 500) -> dict[str, Any]:
    """Robust accuracy of the composition under ``attack`` and under Square (``square_queries``
    queries, judged by the deployed decision), whether the gradient attack looks masked, and the
    gradient attack's robust accuracy at every multiple of eps in ``eps_factors``."""
    if len(x) == 0:
        raise ValueError("the sanity checks need at least one input")
    gradient = _held(*check_robustness(composed, x, threat, attack, batch_size), y)
    square_attack = make_attack("square", steps=square_queries, seed=seed)
    square = _held(*check_robustness(DeployedLogits(composed), x, threat, square_attack,
                                     batch_size), y)
    # masked: Square breaks inputs the gradient attack holds, more than sampling error allows
    masked = paired_lower(int((gradient & ~square).sum()), int((square & ~gradient).sum()))
    growing = {}
    for factor in sorted(eps_factors):
        if threat.norm == "linf" and factor * threat.eps > threat.high - threat.low:
            continue
        larger = threat.scaled(factor)
        growing[f"{larger.eps:g}"] = float(
            _held(*check_robustness(composed, x, larger, attack, batch_size), y).float().mean())
    values = [float(gradient.float().mean()), *growing.values()]
    return {"samples": len(x), "eps": threat.eps,
            "gradient": {"attack": repr(attack), **_summary(gradient)},
            "square": {"queries": square_queries, **_summary(square),
                       "broken_where_the_gradient_attack_held": int((gradient & ~square).sum())},
            "gradient_attack_masked": masked,
            "robust_accuracy_by_eps": growing,
            "falls_as_eps_grows": all(a >= b for a, b in zip(values, values[1:], strict=False)),
            "largest_eps_robust_accuracy": values[-1]}
