"""Metrics as Markdown tables."""

from __future__ import annotations

from collections.abc import Mapping

COLUMNS = (
    ("natural_accuracy", "natural"),
    ("robust_accuracy", "robust"),
    ("robust_inaccuracy", "robust inaccuracy"),
    ("non_robust", "non-robust"),
    ("selection_rate", "selection rate"),
    ("selected_accuracy", "accuracy on selected"),
)


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def metrics_table(metrics: Mapping[str, Mapping[str, float | None]]) -> str:
    """A Markdown table, one row per model, the metrics in percent (``–`` where undefined)."""
    header = "| model | " + " | ".join(title for _, title in COLUMNS) + " |"
    rule = "|---|" + "---:|" * len(COLUMNS)
    rows = [
        f"| {model} | " + " | ".join(_percent(values.get(key)) for key, _ in COLUMNS) + " |"
        for model, values in metrics.items()
    ]
    return "\n".join([header, rule, *rows])
