"""Per-sample records, the metrics computed from them, and composition arithmetic."""

from robustgate.evaluate.adaptive import AdaptiveAttack, check_composition
from robustgate.evaluate.composition import compose_records
from robustgate.evaluate.metrics import robustness_metrics, selection_metrics
from robustgate.evaluate.records import Records, evaluate_model

__all__ = [
    "AdaptiveAttack",
    "Records",
    "check_composition",
    "compose_records",
    "evaluate_model",
    "robustness_metrics",
    "selection_metrics",
]
