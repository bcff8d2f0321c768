"""Architectures, checkpoints and helpers shared by every model."""

from robustgate.models.checkpoint import (
    ARCHITECTURES,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from robustgate.models.mlp import MLP
from robustgate.models.modes import eval_mode, model_device, predict_logits

__all__ = [
    "ARCHITECTURES",
    "MLP",
    "build_model",
    "eval_mode",
    "load_checkpoint",
    "model_device",
    "predict_logits",
    "save_checkpoint",
]
