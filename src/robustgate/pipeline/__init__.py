"""Config → train → evaluate → compose → report: the only place (with ``cli.py``) that wires the
layers together. ``experiment`` runs an experiment config (the demo is one: ``configs/demo.yaml``
of the package)."""

from robustgate.pipeline.experiment import run_experiment

__all__ = ["run_experiment"]
