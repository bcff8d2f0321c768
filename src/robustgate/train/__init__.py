"""The training loop."""

from robustgate.train.loop import TrainConfig, epoch_seed, fit, learning_rate, make_optimizer

__all__ = ["TrainConfig", "epoch_seed", "fit", "learning_rate", "make_optimizer"]
