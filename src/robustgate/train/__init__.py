"""The training loop."""

from robustgate.train.loop import TrainConfig, fit, learning_rate

__all__ = ["TrainConfig", "fit", "learning_rate"]
