"""Metrics from per-sample indicators (DESIGN.md section 1), as fractions in [0, 1]."""

from __future__ import annotations

import numpy as np


def robustness_metrics(accurate: np.ndarray, robust: np.ndarray) -> dict[str, float]:
    """Natural accuracy, and the partition robust accuracy (``acc ∧ rob``), robust inaccuracy
    (``¬acc ∧ rob``) and non-robust (``¬rob``), whose three fractions sum to 1."""
    accurate, robust = np.asarray(accurate, dtype=bool), np.asarray(robust, dtype=bool)
    if accurate.shape != robust.shape or accurate.ndim != 1 or len(accurate) == 0:
        raise ValueError(
            f"need two non-empty 1-D indicator arrays of one length, got shapes "
            f"{accurate.shape} and {robust.shape}"
        )
    return {
        "natural_accuracy": float(accurate.mean()),
        "robust_accuracy": float((accurate & robust).mean()),
        "robust_inaccuracy": float((~accurate & robust).mean()),
        "non_robust": float((~robust).mean()),
    }


def selection_metrics(accurate: np.ndarray, selected: np.ndarray) -> dict[str, float | None]:
    """For an abstain model ``(F, S)``: the selection rate ``mean(S)`` and the accuracy of ``F``
    on the selected inputs (``None`` when nothing is selected)."""
    accurate, selected = np.asarray(accurate, dtype=bool), np.asarray(selected, dtype=bool)
    if accurate.shape != selected.shape or len(accurate) == 0:
        raise ValueError(
            f"need non-empty indicator arrays of one shape, got {accurate.shape} and "
            f"{selected.shape}"
        )
    rate = float(selected.mean())
    return {
        "selection_rate": rate,
        "selected_accuracy": float(accurate[selected].mean()) if selected.any() else None,
    }
