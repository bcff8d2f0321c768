"""Seeded 2-D synthetic data sets (the pictures of the paper's Figure 1 and a few others).

Each generator draws its groups in a fixed order and truncates to ``n`` points, so the group
counts are exactly those of the reference (e.g. ``threegauss`` at n = 1000: 485 / 16 / 499).
The train and test splits are independent draws from the same law.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

Generator = Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]]


def _gaussian(
    rng: np.random.Generator, count: int, mean: tuple[float, float], std: tuple[float, float]
) -> np.ndarray:
    return rng.normal(loc=mean, scale=std, size=(count, 2))


def _ring(
    rng: np.random.Generator, count: int, r_min: float, r_max: float
) -> np.ndarray:
    radius = rng.uniform(r_min, r_max, size=count)
    angle = rng.uniform(0.0, 2 * math.pi, size=count)
    return 0.5 + np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)


def _threegauss(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two large blobs (labels 0 and 1) and a small blob of label 2 beside blob 1."""
    groups = [
        (0, _gaussian(rng, math.ceil(31 * n / 64), (0.25, 0.25), (0.05, 0.05))),
        (2, _gaussian(rng, math.ceil(n / 64), (0.55, 0.80), (0.05 / 3, 0.05 / 2))),
        (1, _gaussian(rng, math.ceil(n / 2), (0.75, 0.75), (0.05, 0.05))),
    ]
    return _concatenate(groups, n)


def _twogauss(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    groups = [
        (0, _gaussian(rng, math.ceil(n / 2), (0.25, 0.25), (0.05, 0.05))),
        (1, _gaussian(rng, math.ceil(n / 2), (0.75, 0.75), (0.05, 0.05))),
    ]
    return _concatenate(groups, n)


def _twocircle(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A disk of radius 0.15 (label 0) inside a ring of radii 0.30 to 0.50 (label 1)."""
    groups = [
        (0, _ring(rng, math.ceil(n / 2), 0.0, 0.15)),
        (1, _ring(rng, math.ceil(n / 2), 0.30, 0.50)),
    ]
    return _concatenate(groups, n)


def _spiral(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved spiral arms (1.5 turns) around the centre, with uniform jitter."""
    per_arm = math.ceil(n / 2)
    step = np.arange(per_arm) / per_arm
    groups = []
    for label, offset in ((0, 0.0), (1, math.pi)):
        radius = 0.05 + 0.4 * step
        angle = 3 * math.pi * step + offset
        points = 0.5 + np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
        groups.append((label, points + rng.uniform(-0.01, 0.01, size=points.shape)))
    return _concatenate(groups, n)


def _concatenate(
    groups: list[tuple[int, np.ndarray]], n: int
) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([points for _, points in groups])[:n]
    y = np.concatenate([np.full(len(points), label) for label, points in groups])[:n]
    return x, y


SYNTHETIC_DATASETS: dict[str, tuple[Generator, int]] = {
    "threegauss": (_threegauss, 3),
    "twogauss": (_twogauss, 2),
    "twocircle": (_twocircle, 2),
    "spiral": (_spiral, 2),
}
SPLITS = ("train", "test")


def make_synthetic(
    name: str, n: int = 1000, seed: int = 0, split: str = "train"
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Draw ``n`` points of the named data set; returns ``(x, y, num_classes)``.

    The two splits use independent random streams derived from ``seed``. Points are clipped to
    the domain ``[0, 1]`` (the Gaussian tails reach it only beyond five standard deviations).
    """
    if name not in SYNTHETIC_DATASETS:
        raise ValueError(
            f"unknown synthetic data set {name!r}; choose from {sorted(SYNTHETIC_DATASETS)}"
        )
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if n < 1:
        raise ValueError(f"n must be a positive number of points, got n={n}")
    generate, num_classes = SYNTHETIC_DATASETS[name]
    rng = np.random.default_rng([seed, SPLITS.index(split)])
    x, y = generate(n, rng)
    x = torch.from_numpy(np.clip(x, 0.0, 1.0).astype(np.float32))
    return x, torch.from_numpy(y.astype(np.int64)), num_classes
