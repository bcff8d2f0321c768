"""The training loop, and the learned gate's training."""

from robustgate.config import TrainConfig
from robustgate.train.gate import train_gate
from robustgate.train.loop import (
    DivergedError,
    epoch_seed,
    fit,
    learning_rate,
    make_optimizer,
)

__all__ = ["DivergedError", "TrainConfig", "epoch_seed", "fit", "learning_rate", "make_optimizer",
           "train_gate"]
