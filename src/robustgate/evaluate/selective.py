"""Selective classification figures of an abstain model ``(F, S)`` with a score: the
risk–coverage curve and the area under it (AURC).

Sorting inputs by score from high to low, keeping the top ``k`` has coverage ``k / n`` and
selective risk ``errors among them / k``. Inputs of equal score are kept in random order, so the
curve uses the expected number of errors within a run of ties (each tied input is wrong with the
run's error rate). AURC is the mean selective risk over ``k = 1 … n``; 0 is a perfect ranking.
"""

from __future__ import annotations

import numpy as np


def risk_coverage_curve(scores: np.ndarray, accurate: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Coverage ``k / n`` and expected selective risk for ``k = 1 … n``."""
    scores, wrong = np.asarray(scores, dtype=np.float64), ~np.asarray(accurate, dtype=bool)
    if scores.shape != wrong.shape or scores.ndim != 1 or len(scores) == 0:
        raise ValueError(f"need non-empty 1-D scores and indicators of one shape, got "
                         f"{scores.shape} and {wrong.shape}")
    order = np.argsort(-scores, kind="stable")
    scores, wrong = scores[order], wrong[order]
    starts = np.flatnonzero(np.r_[True, scores[1:] != scores[:-1]])
    sizes = np.diff(np.r_[starts, len(scores)])
    errors_per_run = np.add.reduceat(wrong.astype(np.float64), starts)
    before = np.r_[0.0, np.cumsum(errors_per_run)[:-1]]
    run = np.repeat(np.arange(len(starts)), sizes)
    position = np.arange(len(scores)) - starts[run] + 1
    errors = before[run] + position * (errors_per_run / sizes)[run]
    kept = np.arange(1, len(scores) + 1)
    return kept / len(scores), errors / kept


def area_under_risk_coverage(scores: np.ndarray, accurate: np.ndarray) -> float:
    """AURC: the mean selective risk over all coverages ``k / n``."""
    return float(risk_coverage_curve(scores, accurate)[1].mean())
