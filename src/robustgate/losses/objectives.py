"""The training objectives of DESIGN.md section 2. Each returns a per-sample loss.

Let ``p(x) = softmax(f(x))``, ``ŷ`` the natural prediction and ``x_adv`` an attack point in
``B(x, eps)``. Attack points are computed in eval mode and the loss forwards run in the model's
own mode; gradients flow only through the loss forwards.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustgate.attacks.pgd import PGD, Attack
from robustgate.models.modes import eval_mode
from robustgate.threat import ThreatModel

WEIGHTS = ("soft", "hard")


def kl_averaged_over_classes(logits: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """``(1/K) · Σ_k p_k(x) (log p_k(x) − log p_k(x_adv))``: KL(p(x) ‖ p(x_adv)) divided by K."""
    log_p = F.log_softmax(logits, dim=1)
    log_q = F.log_softmax(logits_adv, dim=1)
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).mean(dim=1)


def trades_term(
    logits: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, beta_trades: float
) -> torch.Tensor:
    """TRADES: ``CE(f(x), y) + β_T · KL(p(x) ‖ p(x_adv)) / K``."""
    return F.cross_entropy(logits, y, reduction="none") + beta_trades * kl_averaged_over_classes(
        logits, logits_adv
    )


def runner_up(logits: torch.Tensor, excluded: torch.Tensor) -> torch.Tensor:
    """The highest-scoring class of each row other than ``excluded`` (``ỹ`` of DESIGN.md)."""
    masked = logits.detach().clone()
    masked.scatter_(1, excluded.view(-1, 1), -torch.inf)
    return masked.argmax(dim=1)


def training_attack(objective: str = "ce", steps: int = 10, relative_step: float = 0.25,
                    seed: int | None = None) -> PGD:
    """The inner maximization used in training: PGD with a random start and no early exit."""
    return PGD(steps=steps, relative_step=relative_step, objective=objective, seed=seed)


class Standard:
    """``CE(f(x), y)``."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y, reduction="none")


class PGDAT:
    """Madry et al.: ``CE(f(x_adv*), y)``, ``x_adv*`` maximizing ``CE(·, y)``."""

    def __init__(self, threat: ThreatModel, attack: Attack | None = None) -> None:
        self.threat = threat
        self.attack = attack or training_attack("ce")

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with eval_mode(model):
            x_adv = self.attack(model, x, y, self.threat)
        return F.cross_entropy(model(x_adv), y, reduction="none")


class TRADES:
    """Zhang et al.: ``CE(f(x), y) + β_T · KL(p(x) ‖ p(x_adv)) / K``, ``x_adv`` maximizing
    the KL term."""

    def __init__(
        self, threat: ThreatModel, beta_trades: float = 6.0, attack: Attack | None = None
    ) -> None:
        if not beta_trades >= 0:
            raise ValueError(f"beta_trades must be >= 0, got {beta_trades}")
        self.threat = threat
        self.beta_trades = beta_trades
        self.attack = attack or training_attack("kl")

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with eval_mode(model):
            x_adv = self.attack(model, x, y, self.threat)
        return trades_term(model(x), model(x_adv), y, self.beta_trades)


class ERA:
    """Empirical robust abstain: ``w · CE(f(x_adv), ỹ) + β · TRADES``.

    ``x_adv`` maximizes ``CE(·, ŷ)``; ``ỹ`` is the highest-scoring class of ``f(x_adv)`` other
    than ``ŷ``. The weight is ``w = 1 − p_y(x)`` (``"soft"``, not detached, so it also raises
    ``p_y``) or ``w = [ŷ ≠ y]`` (``"hard"``). The first term makes inaccurate samples
    non-robust; the TRADES term, on the same ``x_adv``, keeps accurate ones robust.
    """

    def __init__(
        self,
        threat: ThreatModel,
        beta: float = 1.0,
        beta_trades: float = 6.0,
        weight: str = "soft",
        attack: Attack | None = None,
    ) -> None:
        if weight not in WEIGHTS:
            raise ValueError(f"weight must be one of {WEIGHTS}, got {weight!r}")
        if not (beta >= 0 and beta_trades >= 0):
            raise ValueError(f"beta and beta_trades must be >= 0, got {beta=}, {beta_trades=}")
        self.threat = threat
        self.beta = beta
        self.beta_trades = beta_trades
        self.weight = weight
        self.attack = attack or training_attack("ce")

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with eval_mode(model):
            with torch.no_grad():
                predicted = model(x).argmax(dim=1)
            x_adv = self.attack(model, x, predicted, self.threat)
        logits, logits_adv = model(x), model(x_adv)
        if self.weight == "soft":
            weight = 1 - F.softmax(logits, dim=1).gather(1, y.view(-1, 1)).squeeze(1)
        else:
            weight = (predicted != y).to(logits.dtype)
        abstain_target = runner_up(logits_adv, predicted)
        return weight * F.cross_entropy(
            logits_adv, abstain_target, reduction="none"
        ) + self.beta * trades_term(logits, logits_adv, y, self.beta_trades)
