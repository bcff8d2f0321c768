"""The robustness selector: keep an input for the branch exactly where the branch is robust.

Deployed, it checks the ball of radius ``κ·eps`` around the input ``x'`` it sees (``κ = kappa``,
1 by default). Its decision survives attack where the branch is robust on ``B(x, (κ+1)·eps)``:
that ball contains ``B(x', κ·eps)`` for every ``x'`` in ``B(x, eps)``, so every reachable ``x'``
is selected and answered alike. That check belongs to the evaluation (``evaluate.sound_count``,
the one place that counts), not to the deployed selector (DESIGN.md section 1).
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
    """Selects ``x`` where ``model`` is (empirically) robust on ``B(x, κ·eps)`` (``κ = kappa``;
    ``threat.eps`` itself by default)."""

    def __init__(
        self,
        model: nn.Module,
        threat: ThreatModel,
        attack: Attack,
        kappa: float = 1.0,
        batch_size: int = 1000,
    ) -> None:
        if not kappa >= 1:
            raise ValueError(f"kappa must be >= 1, got {kappa}")
        self.model = model
        self.threat = threat.scaled(kappa)
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
