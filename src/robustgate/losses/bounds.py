"""The certified training objectives of DESIGN.md section 2: the worst case over the threat ball
taken from interval bounds (``certify.interval_bounds``) instead of an attack.

``z(x)`` are the worst-case logits for the label ``y``: ``z_y = 0`` and ``z_j = −m_j``, ``m_j``
the IBP lower bound of ``f_y − f_j`` over ``B(x, eps_t)``; ``CE(z, y)`` upper-bounds the
cross-entropy anywhere in the ball. The training radius ``eps_t`` follows a schedule in epochs
(``set_epoch``, called by the training loop): 0 for ``warmup_epochs``, then a linear ramp to the
threat's eps over ``ramp_epochs``, then constant.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustgate.certify import interval_bounds, margin_specification
from robustgate.distributed import unwrap
from robustgate.threat import ThreatModel


class _Scheduled:
    """The training radius schedule shared by the bound objectives."""

    adversarial = False
    bounded = True

    def __init__(self, threat: ThreatModel, warmup_epochs: float = 0.0,
                 ramp_epochs: float = 0.0) -> None:
        if not (warmup_epochs >= 0 and ramp_epochs >= 0):
            raise ValueError(f"warmup_epochs and ramp_epochs must be >= 0, got "
                             f"{warmup_epochs=}, {ramp_epochs=}")
        self.threat = threat
        self.warmup_epochs = warmup_epochs
        self.ramp_epochs = ramp_epochs
        self.ramp = 1.0

    def set_epoch(self, epoch: float) -> None:
        """Where training is, in epochs (fractional within an epoch)."""
        if epoch < self.warmup_epochs:
            self.ramp = 0.0
        elif self.ramp_epochs == 0:
            self.ramp = 1.0
        else:
            self.ramp = min(1.0, (epoch - self.warmup_epochs) / self.ramp_epochs)

    def lower_bounds(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor,
                     fraction: float = 1.0) -> torch.Tensor:
        """IBP lower bounds of ``f_label − f_j`` (every ``j ≠ label``) over the current ball,
        its radius scaled by ``fraction``; propagated through the model inside a
        DistributedDataParallel wrapper (its gradients reach the same parameters, which the
        wrapper's backward averages over ranks together with those of the loss forward)."""
        model = unwrap(model)
        ball = self.threat.scaled(self.ramp * fraction)
        specification = margin_specification(labels, model.num_classes, x.dtype)
        return interval_bounds(model, x, ball, specification)[0]


def worst_case_cross_entropy(lower: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``CE(z, y)`` for the worst-case logits ``z`` (``z_y = 0``, the others the negated lower
    bounds ``lower`` of ``f_y − f_j``, in the order of ``certify.margin_specification``)."""
    logits = torch.cat([torch.zeros_like(lower[:, :1]), -lower], dim=1)
    return F.cross_entropy(logits, torch.zeros_like(y), reduction="none")


class IBP(_Scheduled):
    """Gowal et al.: ``w_nat · CE(f(x), y) + (1 − w_nat) · CE(z(x), y)``, ``z`` the IBP
    worst-case logits over ``B(x, eps_t)``; ``w_nat`` goes from 1 to ``final_natural_weight``
    (0.5) along the radius ramp. Train at a radius above the test radius."""

    def __init__(self, threat: ThreatModel, warmup_epochs: float = 1.0,
                 ramp_epochs: float = 5.0, final_natural_weight: float = 0.5) -> None:
        super().__init__(threat, warmup_epochs, ramp_epochs)
        if not 0 <= final_natural_weight <= 1:
            raise ValueError(f"final_natural_weight must be in [0, 1], got "
                             f"{final_natural_weight}")
        self.final_natural_weight = final_natural_weight

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        natural = F.cross_entropy(model(x), y, reduction="none")
        weight = 1 - (1 - self.final_natural_weight) * self.ramp
        if self.ramp == 0:
            return natural
        return weight * natural + (1 - weight) * worst_case_cross_entropy(
            self.lower_bounds(model, x, y), y)


class CertifiedERA(_Scheduled):
    """Certified robust abstain by bounds: ``p_y(x) · CE(z(x), y) + λ · (1 − p_y(x)) ·
    softplus(m(x)) + β · CE(f(x), y)``, ``z`` the IBP worst-case logits over ``B(x, eps_t)``,
    ``λ`` the ``abstain_weight`` (1) and ``m`` the IBP
    lower bound of ``f_ŷ − max_{j≠ŷ} f_j`` (the certified margin) over ``B(x, r · eps_t)``:
    accurate samples made certifiable, inaccurate ones pushed below certification. ``p_y`` is
    not detached.

    ``abstain_fraction`` ``r``, a fraction of the radius (1: one ball), serves the IBP bound
    selector (``bound_method: ibp``), which selects where IBP certifies the branch at ``κ·eps``
    and is stable where IBP certifies it at ``(κ+1)·eps``: trained at ``eps_t = (κ+1)·eps``
    (the loss's threat, set by the user) with ``r = κ/(κ+1)``, accurate samples are made
    certifiable where their selection is stable and inaccurate ones uncertifiable by IBP where
    they would be selected. A selector that also certifies by CROWN may still select an input
    that IBP no longer certifies."""

    def __init__(self, threat: ThreatModel, beta: float = 1.0, warmup_epochs: float = 0.0,
                 ramp_epochs: float = 0.0, abstain_fraction: float = 1.0,
                 abstain_weight: float = 1.0) -> None:
        super().__init__(threat, warmup_epochs, ramp_epochs)
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        if not 0 < abstain_fraction <= 1:
            raise ValueError(f"abstain_fraction must be in (0, 1], got {abstain_fraction}")
        if not abstain_weight >= 0:
            raise ValueError(f"abstain_weight must be >= 0, got {abstain_weight}")
        self.beta = beta
        self.abstain_fraction = abstain_fraction
        self.abstain_weight = abstain_weight

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits = model(x)
        natural = F.cross_entropy(logits, y, reduction="none")
        p_y = F.softmax(logits, dim=1).gather(1, y.view(-1, 1)).squeeze(1)
        predicted = logits.detach().argmax(dim=1)
        certified_margin = self.lower_bounds(model, x, predicted, self.abstain_fraction).min(
            dim=1).values
        worst = worst_case_cross_entropy(self.lower_bounds(model, x, y), y)
        return (p_y * worst + self.abstain_weight * (1 - p_y) * F.softplus(certified_margin)
                + self.beta * natural)
