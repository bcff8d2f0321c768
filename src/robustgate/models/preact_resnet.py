"""Pre-activation ResNets (He et al., 2016) for 32x32 inputs: PreAct-ResNet-18 and -34, the
architecture of many published robust CIFAR-10 checkpoints (``models.zoo`` maps their keys)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from robustgate.models.normalize import Normalize
from robustgate.models.resnet import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    FOUR_STAGE_BLOCKS,
    conv3x3,
    init_weights,
    make_stage,
)
from robustgate.models.wideresnet import PreActBlock


class PreActResNet(nn.Module):
    """A 3x3 stem of 64 channels, four stages of pre-activation blocks of ``64, 128, 256, 512``
    channels (the last three halving the resolution), then (with ``final_norm``) BN and ReLU,
    global average pooling and a linear layer. The input is normalized by ``mean`` and ``std``
    first. ``preactivated_shortcut`` picks the shortcut of the blocks that change shape: a 1x1
    convolution of the pre-activated input (True) or of the input itself (False)."""

    def __init__(
        self,
        depth: int = 18,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
        input_size: int = 32,
        preactivated_shortcut: bool = True,
        final_norm: bool = True,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ) -> None:
        super().__init__()
        if depth not in FOUR_STAGE_BLOCKS or num_classes < 2 or in_channels < 1 or width < 1 or (
                input_size < 1):
            raise ValueError(
                f"PreActResNet needs depth {' or '.join(map(str, FOUR_STAGE_BLOCKS))}, "
                f"num_classes >= 2 and positive in_channels, width and input_size; got "
                f"depth={depth}, num_classes={num_classes}, in_channels={in_channels}, "
                f"width={width}, input_size={input_size}"
            )
        self.input_shape = (in_channels, input_size, input_size)
        self.num_classes = num_classes
        widths = [width * 2**index for index in range(4)]
        block = partial(PreActBlock, preactivated_shortcut=preactivated_shortcut)
        self.normalize = Normalize(mean, std, channels=in_channels)
        self.stem = conv3x3(in_channels, width)
        self.stages = nn.Sequential(*(
            make_stage(block, stage_in, stage_out, count, 1 if index == 0 else 2)
            for index, (stage_in, stage_out, count)
            in enumerate(zip([width, *widths[:-1]], widths, FOUR_STAGE_BLOCKS[depth],
                             strict=True))
        ))
        final: list[nn.Module] = [nn.BatchNorm2d(widths[-1]), nn.ReLU()] if final_norm else []
        self.head = nn.Sequential(
            *final, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], num_classes)
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(self.normalize(x))))
