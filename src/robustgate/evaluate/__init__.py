"""Per-sample records, the metrics computed from them, and composition arithmetic."""

from robustgate.evaluate.composition import compose_records
from robustgate.evaluate.metrics import robustness_metrics, selection_metrics
from robustgate.evaluate.records import Records, evaluate_model

__all__ = [
    "Records",
    "compose_records",
    "evaluate_model",
    "robustness_metrics",
    "selection_metrics",
]
