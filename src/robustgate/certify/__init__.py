"""Certificates: randomized smoothing (``Smooth``) and bound propagation (IBP, CROWN-IBP, CROWN)
by per-operation rules (``certify.rules``)."""

from robustgate.certify.bounds import (
    BOUND_METHODS,
    INTERVAL_METHODS,
    certify_bounds,
    crown_bounds,
    crown_certificates,
    interval_bounds,
    interval_certificates,
    margin_specification,
    pair_specification,
    preactivation_bounds,
    traced,
)
from robustgate.certify.smoothing import (
    ABSTAIN,
    Smooth,
    clopper_pearson_lower,
    clopper_pearson_upper,
    covering_l2_radius,
    look_schedule,
    max_certifiable_radius,
    selector_stable_radius,
    sequential_stable_radius,
    stable_radius,
    vote_radius,
)

__all__ = [
    "ABSTAIN",
    "BOUND_METHODS",
    "INTERVAL_METHODS",
    "Smooth",
    "certify_bounds",
    "clopper_pearson_lower",
    "clopper_pearson_upper",
    "covering_l2_radius",
    "crown_bounds",
    "interval_bounds",
    "crown_certificates",
    "interval_certificates",
    "look_schedule",
    "margin_specification",
    "max_certifiable_radius",
    "pair_specification",
    "preactivation_bounds",
    "selector_stable_radius",
    "sequential_stable_radius",
    "stable_radius",
    "traced",
    "vote_radius",
]
