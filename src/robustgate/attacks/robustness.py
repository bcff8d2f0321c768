"""The robustness check: is the prediction constant on ``B(x, eps)``, as far as an attack finds?

Robustness is checked against the model's own prediction, never against the label
(DESIGN.md section 1); an attack gives an upper bound on true robustness.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from robustgate.attacks.pgd import Attack
from robustgate.inputs import check_inputs
from robustgate.models.modes import eval_mode, model_device
from robustgate.threat import ThreatModel

BALL_TOLERANCE = 1e-5


def check_robustness(
    model: nn.Module,
    x: torch.Tensor,
    threat: ThreatModel,
    attack: Attack,
    batch_size: int = 1000,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions ``ŷ(x)`` and the robustness indicator ``rob_eps(x)`` for every input.

    ``rob_eps(x)`` is false where the attack found ``x'`` in the threat ball with
    ``ŷ(x') != ŷ(x)``. An attack that returns a point outside the ball is a bug and raises.
    ``on_batch`` is called with the size of every finished batch (progress).
    """
    check_inputs(x, getattr(model, "input_shape", None), threat.low, threat.high)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = model_device(model)
    predictions, robust = [], []
    with eval_mode(model):
        for start in range(0, len(x), batch_size):
            batch = x[start : start + batch_size].to(device)
            with torch.no_grad():
                predicted = model(batch).argmax(dim=1)
            x_adv = attack(model, batch, predicted, threat)
            distance = threat.norm_of(x_adv - batch)
            if bool((distance > threat.eps + BALL_TOLERANCE).any()):
                raise RuntimeError(
                    f"{attack!r} returned a point at distance {float(distance.max()):.6g} > "
                    f"eps={threat.eps}"
                )
            with torch.no_grad():
                robust.append((model(x_adv).argmax(dim=1) == predicted).cpu())
            predictions.append(predicted.cpu())
            if on_batch is not None:
                on_batch(len(batch))
    if not predictions:
        return torch.empty(0, dtype=torch.int64), torch.empty(0, dtype=torch.bool)
    return torch.cat(predictions), torch.cat(robust)
