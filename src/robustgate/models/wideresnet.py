"""Wide residual networks (Zagoruyko and Komodakis) for 32x32 inputs, e.g. WRN-28-10."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from robustgate.models.normalize import Normalize
from robustgate.models.resnet import CIFAR10_MEAN, CIFAR10_STD, conv3x3, init_weights, make_stage


class PreActBlock(nn.Module):
    """``BN ReLU conv3x3 BN ReLU dropout conv3x3``, plus the input; when the shape changes the
    shortcut is a 1x1 convolution of the pre-activated input (of the input itself with
    ``preactivated_shortcut=False``, as in the first pre-activation ResNets)."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, dropout: float = 0.0,
        preactivated_shortcut: bool = True,
    ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = conv3x3(in_channels, out_channels, stride)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = conv3x3(out_channels, out_channels)
        self.preactivated_shortcut = preactivated_shortcut
        self.shortcut: nn.Conv2d | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = torch.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(
            activated if self.preactivated_shortcut else x)
        out = torch.relu(self.bn2(self.conv1(activated)))
        return self.conv2(self.dropout(out)) + shortcut


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``: a 3x3 stem of 16 channels, three stages of
    ``(depth - 4) / 6`` pre-activation blocks of ``16k, 32k, 64k`` channels (the last two
    halving the resolution), then BN, ReLU, global average pooling and a linear layer.
    The input is normalized by ``mean`` and ``std`` first.
    """

    def __init__(
        self,
        depth: int = 28,
        widen_factor: int = 10,
        num_classes: int = 10,
        in_channels: int = 3,
        dropout: float = 0.0,
        input_size: int = 32,
        mean: Sequence[float] = CIFAR10_MEAN,
        std: Sequence[float] = CIFAR10_STD,
    ) -> None:
        super().__init__()
        if (
            depth < 10 or (depth - 4) % 6 or widen_factor < 1 or num_classes < 2
            or in_channels < 1 or not 0.0 <= dropout < 1.0 or input_size < 1
        ):
            raise ValueError(
                f"WideResNet needs depth 6n + 4 (>= 10), widen_factor >= 1, num_classes >= 2, "
                f"in_channels >= 1, dropout in [0, 1) and input_size >= 1; got depth={depth}, "
                f"widen_factor={widen_factor}, num_classes={num_classes}, "
                f"in_channels={in_channels}, dropout={dropout}, input_size={input_size}"
            )
        self.input_shape = (in_channels, input_size, input_size)
        self.num_classes = num_classes
        blocks = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        block = partial(PreActBlock, dropout=dropout)
        self.normalize = Normalize(mean, std, channels=in_channels)
        self.stem = conv3x3(in_channels, widths[0])
        self.stages = nn.Sequential(*(
            make_stage(block, widths[index], widths[index + 1], blocks, 1 if index == 0 else 2)
            for index in range(3)
        ))
        self.head = nn.Sequential(
            nn.BatchNorm2d(widths[-1]), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(widths[-1], num_classes),
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(self.normalize(x))))
