"""The robustness selector: keep an input for the branch exactly where the branch is robust.

Deployed, it checks the ball of radius ``eps`` around the input it sees (``radius_factor`` 1).
Its decision survives attack where the branch is robust on ``B(x, 2·eps)``: that ball contains
``B(x', eps)`` for every ``x'`` in ``B(x, eps)``, so every reachable ``x'`` is selected and
answered alike. That check at ``2·eps`` belongs to the evaluation (the sound form of
``evaluate.composition``), not to the deployed selector: a selector that itself checked
``2·eps`` around ``x'`` would need ``3·eps`` around ``x`` to be stable (DESIGN.md section 1).
"""

from __future__ import annotations

import torch
from torch import nn

from robustgate.attacks import Attack, check_robustness
from robustgate.threat import ThreatModel


def logit_margin(logits: torch.Tensor) -> torch.Tensor:
    """``f_ŷ(x) − max_{j≠ŷ} f_j(x)``: how far the prediction is from changing."""
    top = logits.topk(2, dim=1).values
    return top[:, 0] - top[:, 1]


class RobustnessSelector:
    """Selects ``x`` where ``model`` is (empirically) robust on ``B(x, radius_factor · eps)``
    (``threat.eps`` itself by default)."""

    def __init__(
        self,
        model: nn.Module,
        threat: ThreatModel,
        attack: Attack,
        radius_factor: float = 1.0,
        batch_size: int = 1000,
    ) -> None:
        if not radius_factor >= 1:
            raise ValueError(
                f"radius_factor must be >= 1, got {radius_factor}"
            )
        self.model = model
        self.threat = threat.scaled(radius_factor)
        self.attack = attack
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return f"RobustnessSelector(radius={self.threat.eps:g}, attack={self.attack!r})"

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """The branch's logit margin: not the decision (a robustness check), but the quantity an
        adaptive attack lowers to make the selector abstain, or raises to make it select."""
        return logit_margin(self.model(x))

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean mask on the CPU: ``True`` where the branch answers."""
        return check_robustness(self.model, x, self.threat, self.attack, self.batch_size)[1]
