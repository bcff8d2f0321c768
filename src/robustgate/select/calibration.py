"""Thresholds of score-based selectors, chosen on validation data.

A selector keeps ``x`` where ``score(x) >= threshold``. Sorting the validation scores from high
to low, keeping the top ``k`` is the threshold ``scores[k-1]``; each rule picks ``k``:

- coverage ``c``: ``k = ceil(c · n)``;
- selective accuracy ``a``: the largest ``k`` whose selected inputs are at least ``a`` accurate;
- composed accuracy ``a``: the largest ``k`` for which the composition (branch on the top ``k``,
  core on the rest) is at least ``a`` accurate.

Tied scores are kept or dropped together, so the realized coverage can exceed the target.
"""

from __future__ import annotations

import math

import numpy as np


def _sorted(scores: np.ndarray, *flags: np.ndarray) -> tuple[np.ndarray, ...]:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or len(scores) == 0 or not np.isfinite(scores).all():
        raise ValueError(f"need a non-empty 1-D array of finite scores, got shape {scores.shape}")
    arrays = [np.asarray(f, dtype=bool) for f in flags]
    for array in arrays:
        if array.shape != scores.shape:
            raise ValueError(f"scores and indicators differ in shape: {scores.shape} vs "
                             f"{array.shape}")
    order = np.argsort(-scores, kind="stable")
    return (scores[order], *[array[order] for array in arrays])


def _check_fraction(name: str, value: float) -> None:
    if not 0 < value <= 1:
        raise ValueError(f"{name} must lie in (0, 1], got {value}")


def _threshold_keeping(ranked: np.ndarray, kept: int) -> float:
    """The threshold that keeps the ``kept`` highest scores (none: above the highest)."""
    if kept == 0:
        return float(np.nextafter(ranked[0], np.inf))
    return float(ranked[kept - 1])


def threshold_for_coverage(scores: np.ndarray, coverage: float) -> float:
    """The threshold that selects a ``coverage`` share of the validation inputs."""
    _check_fraction("coverage", coverage)
    (ranked,) = _sorted(scores)
    return _threshold_keeping(ranked, math.ceil(coverage * len(ranked) - 1e-9))


def _largest_prefix(ranked: np.ndarray, value_of_prefix: np.ndarray, target: float) -> float:
    """Threshold of the largest ``k`` (``k`` = 0 … n) with ``value_of_prefix[k] >= target``, where
    only ``k`` at the end of a run of tied scores can be realized."""
    realizable = np.ones(len(ranked) + 1, dtype=bool)
    realizable[1:-1] = ranked[1:] < ranked[:-1]
    good = np.flatnonzero(realizable & (value_of_prefix >= target - 1e-12))
    return _threshold_keeping(ranked, int(good.max()) if len(good) else 0)


def threshold_for_selective_accuracy(
    scores: np.ndarray, accurate: np.ndarray, selective_accuracy: float
) -> float:
    """The lowest threshold whose selected validation inputs are at least
    ``selective_accuracy`` accurate (selecting nothing if no threshold reaches it)."""
    _check_fraction("selective_accuracy", selective_accuracy)
    ranked, accurate = _sorted(scores, accurate)
    kept = np.arange(len(ranked) + 1)
    correct = np.concatenate([[0], np.cumsum(accurate)])
    value = np.where(kept > 0, correct / np.maximum(kept, 1), np.inf)
    return _largest_prefix(ranked, value, selective_accuracy)


def threshold_for_composed_accuracy(
    scores: np.ndarray, branch_accurate: np.ndarray, core_accurate: np.ndarray,
    composed_accuracy: float,
) -> float:
    """The lowest threshold at which the composition (branch where selected, core elsewhere) is
    at least ``composed_accuracy`` accurate on the validation inputs."""
    _check_fraction("composed_accuracy", composed_accuracy)
    ranked, branch_accurate, core_accurate = _sorted(scores, branch_accurate, core_accurate)
    branch_part = np.concatenate([[0], np.cumsum(branch_accurate)])
    core_part = np.concatenate([np.cumsum(core_accurate[::-1])[::-1], [0]])
    value = (branch_part + core_part) / len(ranked)
    return _largest_prefix(ranked, value, composed_accuracy)
