"""Per-sample records, the metrics computed from them, and composition arithmetic."""

from robustgate.evaluate.adaptive import AdaptiveAttack
from robustgate.evaluate.certified import (
    BoundCertificates,
    Certificates,
    certified_metrics,
    certify_smoothed,
    certify_with_bounds,
    smoothing_metrics,
)
from robustgate.evaluate.grid import Grid
from robustgate.evaluate.metrics import robustness_metrics, selection_metrics
from robustgate.evaluate.records import Records, Routes, evaluate_model, evaluate_or_resume
from robustgate.evaluate.selective import area_under_risk_coverage, risk_coverage_curve
from robustgate.evaluate.sound_count import Selection, compose_chain, compose_records

__all__ = [
    "AdaptiveAttack",
    "BoundCertificates",
    "Certificates",
    "Grid",
    "Records",
    "Routes",
    "Selection",
    "certified_metrics",
    "certify_smoothed",
    "certify_with_bounds",
    "area_under_risk_coverage",
    "compose_chain",
    "compose_records",
    "evaluate_model",
    "evaluate_or_resume",
    "risk_coverage_curve",
    "robustness_metrics",
    "selection_metrics",
    "smoothing_metrics",
]
