"""Architectures, checkpoints and helpers shared by every model."""

from robustgate.models.checkpoint import (
    ARCHITECTURES,
    build_model,
    is_import_path,
    load_checkpoint,
    load_state_dict_file,
    resolve_architecture,
    save_checkpoint,
)
from robustgate.models.cnn import SmallCNN, StridedCNN
from robustgate.models.mixing import MixedClassifier, choose_mixing_weight, mix
from robustgate.models.mlp import MLP
from robustgate.models.modes import eval_mode, model_device, predict_logits
from robustgate.models.normalize import Normalize
from robustgate.models.preact_resnet import PreActResNet
from robustgate.models.resnet import CIFAR10_MEAN, CIFAR10_STD, ResNet
from robustgate.models.wideresnet import WideResNet

__all__ = [
    "ARCHITECTURES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "MLP",
    "MixedClassifier",
    "Normalize",
    "PreActResNet",
    "ResNet",
    "SmallCNN",
    "StridedCNN",
    "WideResNet",
    "build_model",
    "is_import_path",
    "choose_mixing_weight",
    "eval_mode",
    "load_checkpoint",
    "load_state_dict_file",
    "mix",
    "model_device",
    "predict_logits",
    "resolve_architecture",
    "save_checkpoint",
]
