"""Certificates: randomized smoothing (``Smooth``) and bound propagation (IBP, CROWN)."""

from robustgate.certify.bounds import (
    BOUND_METHODS,
    certify_bounds,
    crown_bounds,
    feed_forward_layers,
    interval_bounds,
    margin_specification,
    preactivation_bounds,
)
from robustgate.certify.smoothing import (
    ABSTAIN,
    Smooth,
    clopper_pearson_lower,
    covering_l2_radius,
    max_certifiable_radius,
    stable_radius,
    vote_radius,
)

__all__ = [
    "ABSTAIN",
    "BOUND_METHODS",
    "Smooth",
    "certify_bounds",
    "clopper_pearson_lower",
    "covering_l2_radius",
    "crown_bounds",
    "feed_forward_layers",
    "interval_bounds",
    "margin_specification",
    "max_certifiable_radius",
    "preactivation_bounds",
    "stable_radius",
    "vote_radius",
]
