"""CIFAR-style residual networks (32x32 inputs): ResNet-20/32/44/56/110 and ResNet-18/34.

Also the pieces shared with the wide ResNet: 3x3 convolutions, stage building and weight
initialization.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from robustgate.models.normalize import Normalize

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)

#: Blocks per stage of the four-stage (ImageNet-layout) depths; other depths must be 6n + 2.
FOUR_STAGE_BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """A padded 3x3 convolution without bias (a batch norm follows or precedes it)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def make_stage(
    block: Callable[[int, int, int], nn.Module],
    in_channels: int, out_channels: int, blocks: int, stride: int,
) -> nn.Sequential:
    """``blocks`` residual blocks ``block(in, out, stride)``; only the first changes the
    channel count and strides."""
    return nn.Sequential(*(
        block(in_channels if index == 0 else out_channels, out_channels,
              stride if index == 0 else 1)
        for index in range(blocks)
    ))


def init_weights(model: nn.Module) -> None:
    """He initialization for convolutions; batch norms at scale 1, shift 0; zero linear biases."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.zeros_(module.bias)


class BasicBlock(nn.Module):
    """``conv3x3 BN ReLU conv3x3 BN``, plus the input (through a 1x1 conv and BN when the shape
    changes), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A ResNet of ``BasicBlock``s with a 3x3 stem and no max pooling, as used on CIFAR.

    ``depth`` 18 or 34 gives four stages of width ``width, 2*width, 4*width, 8*width``
    (``width`` 64 by default); any depth ``6n + 2`` (20, 32, 44, 56, 110) gives three stages
    of ``n`` blocks, ``width, 2*width, 4*width`` (``width`` 16 by default). Stages after the
    first halve the resolution; global average pooling and a linear layer end the network.
    The input is normalized by ``mean`` and ``std`` first.
    """

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int | None = None,
        input_size: int = 32,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ) -> None:
        super().__init__()
        if depth in FOUR_STAGE_BLOCKS:
            blocks = FOUR_STAGE_BLOCKS[depth]
        elif depth >= 8 and (depth - 2) % 6 == 0:
            blocks = ((depth - 2) // 6,) * 3
        else:
            raise ValueError(
                f"ResNet depth must be {' or '.join(map(str, FOUR_STAGE_BLOCKS))} or 6n + 2 "
                f"(20, 32, 44, 56, 110); got depth={depth}"
            )
        width = width if width is not None else (64 if len(blocks) == 4 else 16)
        if num_classes < 2 or in_channels < 1 or width < 1 or input_size < 1:
            raise ValueError(
                f"ResNet needs num_classes >= 2 and positive in_channels, width and input_size; "
                f"got num_classes={num_classes}, in_channels={in_channels}, width={width}, "
                f"input_size={input_size}"
            )
        self.input_shape = (in_channels, input_size, input_size)
        self.num_classes = num_classes
        widths = [width * 2**index for index in range(len(blocks))]
        self.normalize = Normalize(mean, std, channels=in_channels)
        self.stem = nn.Sequential(conv3x3(in_channels, width), nn.BatchNorm2d(width), nn.ReLU())
        self.stages = nn.Sequential(*(
            make_stage(BasicBlock, stage_in, stage_out, count, 1 if index == 0 else 2)
            for index, (stage_in, stage_out, count)
            in enumerate(zip([width, *widths[:-1]], widths, blocks, strict=True))
        ))
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(widths[-1], num_classes)
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(self.normalize(x))))
