"""Experiment configurations: explicit, validated, and written beside every result."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from robustgate.data.synthetic import SYNTHETIC_DATASETS
from robustgate.losses.objectives import WEIGHTS
from robustgate.threat import ThreatModel
from robustgate.train.loop import TrainConfig


@dataclass(frozen=True)
class DemoConfig:
    """The demo: standard, TRADES and ERA models on a 2-D data set, their per-sample robustness
    on the train and test points, and the composition ERA (branch) + standard (core).

    The defaults are the recipe that reproduces the paper's Figure 1 on a CPU: an MLP with three
    hidden layers of 64, batch 10, 20 epochs, SGD lr 0.03 (momentum 0.9, weight decay 1e-4),
    lr × 0.1 from 75% of the epochs; training PGD 10 steps of 0.25·eps; TRADES β_T = 6 with the
    KL averaged over classes; ERA β = 0.2 (soft weight) from scratch; evaluation PGD with 100
    steps of 0.1·eps and 3 restarts. ``seed`` seeds the data, the initial weights, the batch
    order and the attacks.
    """

    dataset: str = "threegauss"
    n_train: int = 1000
    n_test: int = 1000
    norm: str = "linf"
    eps: float = 0.1
    hidden: tuple[int, ...] = (64, 64, 64)
    train: TrainConfig = field(default_factory=TrainConfig)
    train_attack_steps: int = 10
    train_attack_relative_step: float = 0.25
    beta_trades: float = 6.0
    era_beta: float = 0.2
    era_weight: str = "soft"
    eval_attack_steps: int = 100
    eval_attack_relative_step: float = 0.1
    eval_attack_restarts: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.dataset not in SYNTHETIC_DATASETS:
            raise ValueError(
                f"dataset={self.dataset!r} is not a synthetic data set; choose from "
                f"{sorted(SYNTHETIC_DATASETS)}"
            )
        if self.n_train < 1 or self.n_test < 1:
            raise ValueError(f"n_train and n_test must be >= 1, got {self.n_train}, {self.n_test}")
        self.threat.scaled(2)  # validates norm and eps, also for the selector at 2·eps
        if self.era_weight not in WEIGHTS:
            raise ValueError(f"era_weight must be one of {WEIGHTS}, got {self.era_weight!r}")
        if self.train.seed != self.seed:
            object.__setattr__(self, "train", dataclasses.replace(self.train, seed=self.seed))
        object.__setattr__(self, "hidden", tuple(self.hidden))

    @property
    def threat(self) -> ThreatModel:
        return ThreatModel(self.norm, self.eps)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DemoConfig:
        """Build from a plain dict (e.g. a saved ``config.json``); unknown keys are an error."""
        known = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; known keys are {sorted(known)}")
        values = dict(values)
        if isinstance(values.get("train"), dict):
            train_known = {item.name for item in dataclasses.fields(TrainConfig)}
            bad = sorted(set(values["train"]) - train_known)
            if bad:
                raise ValueError(f"unknown config keys {['train.' + key for key in bad]}")
            values["train"] = TrainConfig(**values["train"])
        return cls(**values)
