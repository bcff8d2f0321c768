"""Config → train → evaluate → compose → report: the only place (with ``cli.py``) that wires the
layers together. ``demo`` is the 2-D demo, ``experiment`` a config-driven run on real data."""

from robustgate.pipeline.demo import (
    COMPOSITIONS,
    MODELS,
    SPLITS,
    composition_metrics,
    run_demo,
    split_metrics,
)
from robustgate.pipeline.experiment import run_experiment

__all__ = [
    "COMPOSITIONS",
    "MODELS",
    "SPLITS",
    "composition_metrics",
    "run_demo",
    "run_experiment",
    "split_metrics",
]
