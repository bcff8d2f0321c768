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

CERTIFIED_COLUMNS = (
    ("natural_accuracy", "natural"),
    ("certified_accuracy", "certified"),
    ("certified_robust_inaccuracy", "certified robust inaccuracy"),
    ("not_certified", "not certified"),
)
SMOOTHED_COLUMNS = (("natural_accuracy", "natural (smoothed)"), *CERTIFIED_COLUMNS[1:],
                    ("abstain_rate", "abstain"))


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def metrics_table(metrics: Mapping[str, Mapping[str, float | None]],
                  columns: tuple[tuple[str, str], ...] = COLUMNS, first: str = "model") -> str:
    """A Markdown table, one row per model (or radius: ``first``), the metrics of ``columns``
    in percent (``–`` where undefined)."""
    header = f"| {first} | " + " | ".join(title for _, title in columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    rows = [
        f"| {model} | " + " | ".join(_percent(values.get(key)) for key, _ in columns) + " |"
        for model, values in metrics.items()
    ]
    return "\n".join([header, rule, *rows])


def with_composition_forms(metrics: Mapping[str, Mapping[str, object]]
                           ) -> dict[str, Mapping[str, object]]:
    """``metrics`` with, after every composition counted in the sound form, its other forms as
    rows: ``(unattacked)`` (the selection taken on the clean input: not a robust accuracy) and
    ``(exact)`` where it was computed."""
    rows: dict[str, Mapping[str, object]] = {}
    for name, values in metrics.items():
        rows[name] = values
        if values.get("unattacked_robust_accuracy") is not None:
            rows[f"{name} (unattacked)"] = {
                "natural_accuracy": values["natural_accuracy"],
                "robust_accuracy": values["unattacked_robust_accuracy"]}
        if "exact" in values:
            rows[f"{name} (exact)"] = values["exact"]
    return rows
