"""Data sets as ``(x, y)``: ``x`` float32 in ``[0, 1]``, ``y`` int64."""

from robustgate.data.datasets import DATASETS, Dataset, load_dataset
from robustgate.data.synthetic import SYNTHETIC_DATASETS, make_synthetic

__all__ = ["DATASETS", "SYNTHETIC_DATASETS", "Dataset", "load_dataset", "make_synthetic"]
