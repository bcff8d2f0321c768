"""Certificates: randomized smoothing (``Smooth``); bound propagation is to come."""

from robustgate.certify.smoothing import (
    ABSTAIN,
    Smooth,
    clopper_pearson_lower,
    covering_l2_radius,
    max_certifiable_radius,
    stable_radius,
)

__all__ = [
    "ABSTAIN",
    "Smooth",
    "clopper_pearson_lower",
    "covering_l2_radius",
    "max_certifiable_radius",
    "stable_radius",
]
