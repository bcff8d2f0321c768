"""Selectors decide, per input, whether the branch answers: ``select(x) -> mask``, with a
differentiable ``score(x)`` that grows where they select."""

from robustgate.select.base import Selector, ThresholdSelector
from robustgate.select.bounds import BoundSelector
from robustgate.select.calibration import (
    threshold_for_composed_accuracy,
    threshold_for_coverage,
    threshold_for_selective_accuracy,
)
from robustgate.select.cascade import (
    CASCADE_STAGES,
    Cascade,
    StageChoice,
    choose_stages,
    describe_route,
)
from robustgate.select.confidence import MEASURES, ConfidenceSelector, confidence
from robustgate.select.gate import GateSelector
from robustgate.select.robustness import RobustnessSelector, logit_margin
from robustgate.select.smoothing import SmoothingSelector

__all__ = [
    "CASCADE_STAGES",
    "Cascade",
    "StageChoice",
    "choose_stages",
    "describe_route",
    "MEASURES",
    "BoundSelector",
    "ConfidenceSelector",
    "GateSelector",
    "RobustnessSelector",
    "Selector",
    "SmoothingSelector",
    "ThresholdSelector",
    "confidence",
    "logit_margin",
    "threshold_for_composed_accuracy",
    "threshold_for_coverage",
    "threshold_for_selective_accuracy",
]
