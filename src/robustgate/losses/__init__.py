"""The training objectives behind one registry: ``make_loss(name, threat, **params)``.

Adversarial objectives take a threat model (and optionally the ``attack`` of their inner
maximization), the bound objectives ``ibp`` and ``cert_era`` a threat model and a radius
schedule; the others (``standard``, and the noise objectives ``gaussian`` and ``cra``, which take
``sigma_train``) take none.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import nn

from robustgate.losses.bounds import IBP, CertifiedERA, worst_case_cross_entropy
from robustgate.losses.noise import CRA, Gaussian, soft_smoothed_radius
from robustgate.losses.objectives import (
    ERA,
    PGDAT,
    TRADES,
    ERAConfidence,
    ERAGambler,
    Standard,
    kl_averaged_over_classes,
    runner_up,
    trades_term,
    training_attack,
)
from robustgate.threat import ThreatModel


class Loss(Protocol):
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...


LOSSES: dict[str, type] = {
    "standard": Standard,
    "pgd_at": PGDAT,
    "trades": TRADES,
    "era": ERA,
    "era_gambler": ERAGambler,
    "era_conf": ERAConfidence,
    "gaussian": Gaussian,
    "cra": CRA,
    "ibp": IBP,
    "cert_era": CertifiedERA,
}


def make_loss(name: str, threat: ThreatModel | None = None, **params: Any) -> Loss:
    """Build the named objective; adversarial ones need a ``threat``, the others ignore it."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {sorted(LOSSES)}")
    loss_class = LOSSES[name]
    needs_threat = loss_class.adversarial or getattr(loss_class, "bounded", False)
    if needs_threat and threat is None:
        raise ValueError(f"loss {name!r} is adversarial and needs a threat model")
    arguments = (threat,) if needs_threat else ()
    try:
        return loss_class(*arguments, **params)
    except TypeError as error:
        raise ValueError(f"bad parameters {sorted(params)} for loss {name!r}: {error}") from None


__all__ = [
    "CRA",
    "ERA",
    "IBP",
    "CertifiedERA",
    "ERAConfidence",
    "ERAGambler",
    "Gaussian",
    "LOSSES",
    "PGDAT",
    "TRADES",
    "Loss",
    "Standard",
    "kl_averaged_over_classes",
    "make_loss",
    "runner_up",
    "soft_smoothed_radius",
    "trades_term",
    "training_attack",
    "worst_case_cross_entropy",
]
