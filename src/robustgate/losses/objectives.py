"""The training objectives of DESIGN.md section 2. Each returns a per-sample loss.

Let ``p(x) = softmax(f(x))``, ``ŷ`` the natural prediction and ``x_adv`` an attack point in
``B(x, eps)``. Attack points are computed in eval mode and the loss forwards run in the model's
own mode; gradients flow only through the loss forwards. Under torchrun the model given is
wrapped in DistributedDataParallel: attack points are computed against the model inside it
(:func:`attack_point`), so that only the loss forwards go through the wrapper.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from robustgate.attacks.pgd import PGD, Attack
from robustgate.config import AttackSettings
from robustgate.distributed import unwrap
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


def training_attack(objective: str = "ce", settings: AttackSettings | None = None,
                    seed: int | None = None) -> PGD:
    """The inner maximization used in training: PGD on ``objective`` with a random start and no
    early exit, its steps, step size and restarts from ``settings`` (``config.AttackSettings``,
    whose defaults of these three are the training attack's; its ``objective`` and
    ``target_classes`` are the evaluation attack's and play no part here)."""
    settings = settings if settings is not None else AttackSettings()
    return PGD(steps=settings.steps, relative_step=settings.relative_step,
               restarts=settings.restarts, objective=objective, seed=seed)


def attack_point(attack: Attack, model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                 threat: ThreatModel) -> torch.Tensor:
    """``attack``'s point against ``model`` in eval mode, computed with the model inside a
    DistributedDataParallel wrapper: its many forwards and input gradients are this rank's
    alone. A forward through the wrapper takes part in collective work (the buffer broadcast
    DDP does by default, the reduction ``find_unused_parameters`` prepares), so ranks running
    different numbers of attack forwards through it hang (``distributed.unwrap``)."""
    attacked = unwrap(model)
    with eval_mode(attacked):
        return attack(attacked, x, target, threat)


class Standard:
    """``CE(f(x), y)``."""

    adversarial = False

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x), y, reduction="none")


class PGDAT:
    """Madry et al.: ``CE(f(x_adv*), y)``, ``x_adv*`` maximizing ``CE(·, y)``."""

    adversarial = True

    def __init__(self, threat: ThreatModel, attack: Attack | None = None) -> None:
        self.threat = threat
        self.attack = attack or training_attack("ce")

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = attack_point(self.attack, model, x, y, self.threat)
        return F.cross_entropy(model(x_adv), y, reduction="none")


class TRADES:
    """Zhang et al.: ``CE(f(x), y) + β_T · KL(p(x) ‖ p(x_adv)) / K``, ``x_adv`` maximizing
    the KL term."""

    adversarial = True

    def __init__(
        self, threat: ThreatModel, beta_trades: float = 6.0, attack: Attack | None = None
    ) -> None:
        if not beta_trades >= 0:
            raise ValueError(f"beta_trades must be >= 0, got {beta_trades}")
        self.threat = threat
        self.beta_trades = beta_trades
        self.attack = attack or training_attack("kl")

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv = attack_point(self.attack, model, x, y, self.threat)
        return trades_term(model(x), model(x_adv), y, self.beta_trades)


class _AbstainObjective:
    """Shared by the ERA family: ``x_adv`` maximizes ``CE(·, ŷ)`` (computed in eval mode),
    ``ỹ`` is the highest-scoring class of ``f(x_adv)`` other than ``ŷ``, and the loss is an
    abstain term plus ``β · TRADES`` on the same ``x_adv``."""

    adversarial = True

    def __init__(
        self,
        threat: ThreatModel,
        beta: float = 1.0,
        beta_trades: float = 6.0,
        attack: Attack | None = None,
    ) -> None:
        if not (beta >= 0 and beta_trades >= 0):
            raise ValueError(f"beta and beta_trades must be >= 0, got {beta=}, {beta_trades=}")
        self.threat = threat
        self.beta = beta
        self.beta_trades = beta_trades
        self.attack = attack or training_attack("ce")

    def abstain_term(
        self, logits: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor,
        predicted: torch.Tensor, abstain_target: torch.Tensor,
    ) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        attacked = unwrap(model)
        with eval_mode(attacked), torch.no_grad():
            predicted = attacked(x).argmax(dim=1)
        x_adv = attack_point(self.attack, model, x, predicted, self.threat)
        logits, logits_adv = model(x), model(x_adv)
        abstain_target = runner_up(logits_adv, predicted)
        return self.abstain_term(
            logits, logits_adv, y, predicted, abstain_target
        ) + self.beta * trades_term(logits, logits_adv, y, self.beta_trades)


def _probability_of(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.softmax(logits, dim=1).gather(1, labels.view(-1, 1)).squeeze(1)


def _abstain_extended(logits: torch.Tensor, logits_adv: torch.Tensor,
                      abstain_target: torch.Tensor) -> torch.Tensor:
    """Softmax over ``f(x)`` with the abstain score ``f(x_adv)_ỹ`` appended as class ``K``."""
    abstain_score = logits_adv.gather(1, abstain_target.view(-1, 1))
    return F.softmax(torch.cat([logits, abstain_score], dim=1), dim=1)


class ERA(_AbstainObjective):
    """Empirical robust abstain: ``w · CE(f(x_adv), ỹ) + β · TRADES``.

    The weight is ``w = 1 − p_y(x)`` (``"soft"``, not detached, so it also raises ``p_y``) or
    ``w = [ŷ ≠ y]`` (``"hard"``). The first term makes inaccurate samples non-robust; the
    TRADES term keeps accurate ones robust.
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
        super().__init__(threat, beta, beta_trades, attack)
        self.weight = weight

    def abstain_term(self, logits, logits_adv, y, predicted, abstain_target):
        if self.weight == "soft":
            weight = 1 - _probability_of(logits, y)
        else:
            weight = (predicted != y).to(logits.dtype)
        return weight * F.cross_entropy(logits_adv, abstain_target, reduction="none")


class ERAGambler(_AbstainObjective):
    """Deep-Gamblers-style ERA: ``−log(c · q_y + q_abstain) + β · TRADES``, ``q`` the softmax of
    ``f(x)`` extended by the abstain score ``f(x_adv)_ỹ``; the payoff ``c`` > 0 (larger favours
    predicting over abstaining)."""

    def __init__(
        self,
        threat: ThreatModel,
        beta: float = 1.0,
        beta_trades: float = 6.0,
        payoff: float = 1.0,
        attack: Attack | None = None,
    ) -> None:
        if not payoff > 0:
            raise ValueError(f"payoff must be > 0, got {payoff}")
        super().__init__(threat, beta, beta_trades, attack)
        self.payoff = payoff

    def abstain_term(self, logits, logits_adv, y, predicted, abstain_target):
        extended = _abstain_extended(logits, logits_adv, abstain_target)
        q_y, q_abstain = extended.gather(1, y.view(-1, 1)).squeeze(1), extended[:, -1]
        return -torch.log(self.payoff * q_y + q_abstain)


class ERAConfidence(_AbstainObjective):
    """ERA for a confidence selector: ``((1 − p_y(x)) + q_abstain) · KL(u ‖ p(x)) / K +
    β · TRADES``, ``u`` uniform: low confidence where the sample is inaccurate or non-robust."""

    def abstain_term(self, logits, logits_adv, y, predicted, abstain_target):
        extended = _abstain_extended(logits, logits_adv, abstain_target)
        weight = (1 - _probability_of(logits, y)) + extended[:, -1]
        log_p = F.log_softmax(logits, dim=1)
        uniform = torch.full_like(log_p, -math.log(logits.shape[1]))
        kl_uniform = F.kl_div(log_p, uniform, reduction="none", log_target=True).mean(dim=1)
        return weight * kl_uniform
