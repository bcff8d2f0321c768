"""One entry point for every data set: ``load_dataset(name, ...) -> Dataset``.

Splits are ``train``, ``validation`` and ``test``. The validation split is a seeded random
subset of the *training* data (never of the test set) of ``validation_size`` samples, and the
train split is then the rest of the training data, so the two are disjoint and together are the
full training set.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from robustgate.data.arrays import load_npz
from robustgate.data.cifar import CIFAR_DATASETS, load_cifar, num_cifar_classes
from robustgate.data.idx import IDX_DATASETS, load_idx_dataset
from robustgate.data.idx import NUM_CLASSES as IDX_NUM_CLASSES
from robustgate.data.synthetic import SYNTHETIC_DATASETS, make_synthetic

FILE_DATASETS = (*IDX_DATASETS, *CIFAR_DATASETS)
DATASETS = (*FILE_DATASETS, "npz", *SYNTHETIC_DATASETS)
SPLITS = ("train", "validation", "test")
DEFAULT_SYNTHETIC_SIZE = 1000


@dataclass(frozen=True)
class Dataset:
    """One split of a data set: inputs ``x`` (float32 in ``[0, 1]``, shape ``(n, *input_shape)``),
    labels ``y`` (int64 in ``[0, num_classes)``), the data set's ``name`` and the ``split``."""

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    name: str
    split: str

    def __len__(self) -> int:
        return len(self.y)


def load_dataset(
    name: str,
    root: str | Path | None = None,
    split: str = "train",
    download: bool = False,
    validation_size: int | float = 0,
    seed: int = 0,
    path: str | Path | None = None,
    *,
    verify: bool = True,
    n: int | None = None,
) -> Dataset:
    """Load one split of the data set ``name`` (one of ``DATASETS``).

    - ``"mnist"``, ``"fashion_mnist"``, ``"cifar10"``, ``"cifar100"`` read their canonical files
      from the directory ``root``; ``download=True`` fetches missing ones there, and
      ``verify=False`` skips the checksums (for files that are not the canonical ones).
    - ``"npz"`` reads the ``.npz`` at ``path``, which holds the requested split's data (for
      ``train`` and ``validation``, the training data the validation subset is drawn from).
    - the synthetic sets draw ``n`` points (default 1000) per split with ``seed``.

    ``validation_size`` is a count of training samples or a fraction in ``(0, 1)`` of them; it
    is drawn with ``seed``, and ``0`` means no validation split.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; choose from {DATASETS}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    _check_validation_size(validation_size)
    if split == "validation" and validation_size == 0:
        raise ValueError("split='validation' needs a validation_size > 0 (a count or fraction)")
    if n is not None and name not in SYNTHETIC_DATASETS:
        raise ValueError(f"n={n} applies to the synthetic data sets only, not to {name!r}")
    source_split = "test" if split == "test" else "train"
    x, y, num_classes = _load(name, root, source_split, download, seed, path, verify, n)
    if split != "test" and validation_size != 0:
        train, validation = validation_split(len(y), validation_size, seed)
        chosen = torch.from_numpy(validation if split == "validation" else train)
        x, y = x[chosen], y[chosen]
    return Dataset(x, y, num_classes, tuple(x.shape[1:]), name, split)


def validation_split(
    n: int, validation_size: int | float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split the indices ``0 … n-1`` into ``(train, validation)``, each sorted: ``validation``
    is a seeded random subset of ``validation_size`` indices (a count, or a fraction in
    ``(0, 1)`` of ``n``), ``train`` the rest, which may not be empty."""
    _check_validation_size(validation_size)
    count = validation_size if isinstance(validation_size, numbers.Integral) else round(
        validation_size * n)
    if not 1 <= count < n:
        raise ValueError(
            f"validation_size={validation_size!r} gives {count} validation samples of {n} "
            "training samples; it must leave at least one of each"
        )
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[count:]), np.sort(order[:count])


def _check_validation_size(validation_size: int | float) -> None:
    if isinstance(validation_size, bool) or not isinstance(validation_size, numbers.Real):
        raise ValueError(
            f"validation_size must be an int count or a float fraction, got {validation_size!r}"
        )
    if isinstance(validation_size, numbers.Integral):
        if validation_size < 0:
            raise ValueError(f"validation_size must be >= 0, got {validation_size}")
    elif not 0.0 < validation_size < 1.0:
        raise ValueError(f"a fractional validation_size must lie in (0, 1), got {validation_size}")


def _load(
    name: str,
    root: str | Path | None,
    split: str,
    download: bool,
    seed: int,
    path: str | Path | None,
    verify: bool,
    n: int | None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    if name in SYNTHETIC_DATASETS:
        return make_synthetic(name, DEFAULT_SYNTHETIC_SIZE if n is None else n, seed, split)
    if name == "npz":
        if path is None:
            raise ValueError("the 'npz' data set needs path=, the .npz file holding x and y")
        return load_npz(path)
    if root is None:
        raise ValueError(f"the {name!r} data set needs root=, the directory with its files")
    if name in IDX_DATASETS:
        return (*load_idx_dataset(name, root, split, download, verify), IDX_NUM_CLASSES)
    return (*load_cifar(name, root, split, download, verify), num_cifar_classes(name))
