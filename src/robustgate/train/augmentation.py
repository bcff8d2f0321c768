"""Data augmentation of training batches, on the training device, by kornia's augmentations.

The transforms draw from torch's random generator, which the training loop seeds from the
epoch's seed (``train.loop.epoch_seed``): an interrupted run resumes to the same weights.
Images stay in the input domain ``[0, 1]`` (padding and fill are zeros), so that the threat
model and the attacks in the loss see inputs of the data's own domain.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import kornia.augmentation as augmentations
import torch
from torch import nn

from robustgate.config import AugmentationSettings

Augment = Callable[[torch.Tensor], torch.Tensor]


def make_augmentation(settings: AugmentationSettings, input_shape: Sequence[int]) -> Augment:
    """The batch transform ``settings`` describe for images of ``input_shape`` ``(C, H, W)``."""
    shape = tuple(input_shape)
    if len(shape) != 3:
        raise ValueError(f"augmentation {settings.name!r} transforms images (C, H, W); the data "
                         f"has inputs of shape {shape}: leave augmentation out")
    channels, height, width = shape
    if settings.name in ("randaugment", "autoaugment") and channels != 3:
        raise ValueError(f"augmentation {settings.name!r} is a policy for RGB images; the data "
                         f"has {channels} channel(s): use affine or crop_flip")
    if settings.name == "affine":
        transform: nn.Module = augmentations.RandomAffine(
            degrees=settings.degrees, translate=(settings.translate, settings.translate),
            scale=settings.scale, p=1.0)
    elif settings.name == "crop_flip":
        transform = augmentations.AugmentationSequential(
            augmentations.RandomCrop((height, width), padding=settings.padding),
            augmentations.RandomHorizontalFlip())
    elif settings.name == "randaugment":
        transform = augmentations.auto.RandAugment(n=settings.operations, m=settings.magnitude)
    else:
        transform = augmentations.auto.AutoAugment(policy="cifar10")

    def augment(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return transform(x).clamp(0.0, 1.0).to(x.dtype)

    return augment
