"""User data as arrays: an ``.npz`` file with ``x`` and ``y``, or arrays in memory.

``x`` is uint8 (0–255, divided by 255) or floating point already in ``[0, 1]``, of shape
``(n, H, W)`` (a channel axis is added), ``(n, C, H, W)``, or ``(n, d)`` for vector data (kept as
is). ``y`` holds ``n`` non-negative integer labels (an integer dtype, or floats that are all
whole numbers). The ``.npz`` may also hold ``num_classes``; otherwise it is ``max(y) + 1``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch


def arrays_to_tensors(
    x: np.ndarray, y: np.ndarray, source: str = "arrays"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``x`` and ``y`` and convert them: ``x`` float32 in ``[0, 1]`` with a channel axis
    for images, ``y`` int64. ``source`` names the data in errors."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim not in (2, 3, 4):
        raise ValueError(
            f"{source}: x must have shape (n, d), (n, H, W) or (n, C, H, W), got {x.shape}"
        )
    if len(x) == 0:
        raise ValueError(f"{source}: x holds no samples (shape {x.shape})")
    if x.dtype == np.uint8:
        inputs = x.astype(np.float32) / 255.0
    elif np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise ValueError(f"{source}: x contains {int((~np.isfinite(x)).sum())} NaN or "
                             "infinite values")
        low, high = float(x.min()), float(x.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"{source}: float x must lie in [0, 1], found values in [{low}, {high}] "
                "(normalization belongs inside the model)"
            )
        inputs = x.astype(np.float32)
    else:
        raise ValueError(f"{source}: x must be uint8 (0–255) or float in [0, 1], got {x.dtype}")
    if inputs.ndim == 3:
        inputs = inputs[:, None]
    return torch.from_numpy(np.ascontiguousarray(inputs)), _labels(y, len(x), source)


def _labels(y: np.ndarray, n: int, source: str) -> torch.Tensor:
    if y.shape != (n,):
        raise ValueError(f"{source}: y must hold one label per sample, shape ({n},), got {y.shape}")
    if np.issubdtype(y.dtype, np.floating):
        if not (np.isfinite(y).all() and (y == np.round(y)).all()):
            raise ValueError(f"{source}: labels must be integers, got non-integer {y.dtype} values")
    elif not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{source}: labels must be integers, got dtype {y.dtype}")
    if y.min() < 0:
        raise ValueError(f"{source}: labels must be >= 0, found {y.min()}")
    return torch.from_numpy(y.astype(np.int64))


def load_npz(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Load ``x`` and ``y`` (and optionally ``num_classes``) from the ``.npz`` at ``path``;
    returns ``(x, y, num_classes)`` as described in the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no .npz file at {path}")
    try:
        with path.open("rb") as stream:
            loaded = np.load(stream, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):
                raise ValueError("it holds a single array, not named arrays x and y")
            files = sorted(loaded.files)
            arrays = {key: loaded[key] for key in ("x", "y", "num_classes") if key in files}
    except (ValueError, zipfile.BadZipFile, EOFError, OSError) as error:
        raise ValueError(f"{path}: not a readable .npz file: {error}") from error
    missing = sorted({"x", "y"} - set(arrays))
    if missing:
        raise ValueError(f"{path}: missing array(s) {missing}; the file holds {files}")
    x, y, stored = arrays["x"], arrays["y"], arrays.get("num_classes")
    inputs, labels = arrays_to_tensors(x, y, str(path))
    smallest = int(labels.max()) + 1
    if stored is None:
        return inputs, labels, smallest
    if stored.shape != () or not np.issubdtype(stored.dtype, np.integer) or int(stored) < smallest:
        raise ValueError(
            f"{path}: num_classes must be an integer >= max(y) + 1 = {smallest}, got {stored!r}"
        )
    return inputs, labels, int(stored)
