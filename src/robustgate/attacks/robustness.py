"""The robustness check: is the prediction constant on ``B(x, eps)``, as far as an attack finds?

Robustness is checked against the model's own prediction, never against the label
(DESIGN.md section 1); an attack gives an upper bound on true robustness.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Protocol

import torch
from torch import nn

from robustgate.attacks.pgd import Attack, run_attack
from robustgate.inputs import check_inputs, check_outputs
from robustgate.models.modes import as_model_dtype, eval_mode, model_device
from robustgate.threat import ThreatModel

BALL_TOLERANCE = 1e-5


class Predictor(Protocol):
    """Anything that answers labels for a batch (a composed classifier: ``compose``)."""

    def labels(self, x: torch.Tensor) -> torch.Tensor: ...


def check_robustness(
    predictor: nn.Module | Predictor,
    x: torch.Tensor,
    threat: ThreatModel,
    attack: Attack,
    batch_size: int = 1000,
    indices: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions ``ŷ(x)`` and the robustness indicator ``rob_eps(x)`` for every input.

    ``predictor`` is a model (its logits' argmax, in eval mode, on its device) or anything with
    ``labels(x)`` (a composed classifier, attacked by an attack on it). ``rob_eps(x)`` is false
    where the attack found ``x'`` in the threat ball with ``ŷ(x') != ŷ(x)``; a point the attack
    did not move keeps its prediction. An attack that returns a point outside the ball is a bug
    and raises. Non-finite logits are refused; inputs of another floating dtype than the model's
    are converted, with a warning. ``indices`` (the inputs' indices in their data set) go to an
    attack that seeds its randomness per input (``PerInputAttack``: its answer for an input then
    depends on neither the batch nor the other inputs).
    """
    if isinstance(predictor, nn.Module):
        x = as_model_dtype(x, predictor)
    check_inputs(x, getattr(predictor, "input_shape", None), threat.low, threat.high)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(predictor, nn.Module):
        device, mode = model_device(predictor), eval_mode(predictor)

        def labels(batch: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                logits = predictor(batch)
            check_outputs(logits, type(predictor).__name__)
            return logits.argmax(dim=1)
    else:
        device, mode, labels = x.device, nullcontext(), predictor.labels
    predictions, robust = [], []
    with mode:
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size].to(device)
            predicted = labels(batch)
            x_adv = run_attack(attack, predictor, batch, predicted, threat,
                               None if indices is None else indices[start : start + batch_size])
            distance = threat.norm_of(x_adv - batch)
            if bool((distance > threat.eps + BALL_TOLERANCE).any()):
                raise RuntimeError(
                    f"{attack!r} returned a point at distance {float(distance.max()):.6g} > "
                    f"eps={threat.eps}"
                )
            moved = (x_adv != batch).flatten(1).any(dim=1)
            still = torch.ones(len(batch), dtype=torch.bool)
            if bool(moved.any()):
                still[moved.cpu()] = (labels(x_adv[moved]) == predicted[moved]).cpu()
            predictions.append(predicted.cpu())
            robust.append(still)
    if not predictions:
        return torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.bool)
    return torch.cat(predictions), torch.cat(robust)
