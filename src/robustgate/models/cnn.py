"""A small convolutional network for 28x28 grayscale images (the MNIST family)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustgate.models.normalize import Normalize

MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)


class SmallCNN(nn.Module):
    """``Normalize -> [conv3x3 ReLU conv3x3 ReLU maxpool2] x 2 -> linear ReLU -> linear``.

    The convolutions are unpadded (as in the TRADES SmallCNN), so a 28x28 input leaves
    ``channels[1]`` maps of 4x4 for the classifier. One ``nn.Sequential`` of plain layers
    (``self.layers``), which interval bound propagation can walk.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: Sequence[int] = (32, 64),
        hidden: int = 200,
        input_size: int = 28,
        mean: Sequence[float] = MNIST_MEAN,
        std: Sequence[float] = MNIST_STD,
    ) -> None:
        super().__init__()
        feature_size = ((input_size - 4) // 2 - 4) // 2
        if (
            in_channels < 1 or num_classes < 2 or len(channels) != 2
            or any(width < 1 for width in channels) or hidden < 1 or feature_size < 1
        ):
            raise ValueError(
                f"SmallCNN needs in_channels >= 1, num_classes >= 2, two positive channel "
                f"widths, hidden >= 1 and input_size >= 16; got in_channels={in_channels}, "
                f"num_classes={num_classes}, channels={tuple(channels)}, hidden={hidden}, "
                f"input_size={input_size}"
            )
        self.input_shape = (in_channels, input_size, input_size)
        self.num_classes = num_classes
        first, second = channels
        self.layers = nn.Sequential(
            Normalize(mean, std, channels=in_channels),
            nn.Conv2d(in_channels, first, 3), nn.ReLU(),
            nn.Conv2d(first, first, 3), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(first, second, 3), nn.ReLU(),
            nn.Conv2d(second, second, 3), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(second * feature_size**2, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class StridedCNN(nn.Module):
    """``Normalize -> conv4x4/2 ReLU -> conv4x4/2 ReLU -> linear ReLU -> linear``: the small
    convolutional network of provable-defence work (Wong & Kolter), cheap enough for
    adversarial training on a CPU (about 30 times fewer multiply-adds than ``SmallCNN``)."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: Sequence[int] = (16, 32),
        hidden: int = 100,
        input_size: int = 28,
        mean: Sequence[float] = MNIST_MEAN,
        std: Sequence[float] = MNIST_STD,
    ) -> None:
        super().__init__()
        if (
            in_channels < 1 or num_classes < 2 or len(channels) != 2
            or any(width < 1 for width in channels) or hidden < 1 or input_size % 4
        ):
            raise ValueError(
                f"StridedCNN needs in_channels >= 1, num_classes >= 2, two positive channel "
                f"widths, hidden >= 1 and input_size divisible by 4; got "
                f"in_channels={in_channels}, num_classes={num_classes}, "
                f"channels={tuple(channels)}, hidden={hidden}, input_size={input_size}"
            )
        self.input_shape = (in_channels, input_size, input_size)
        self.num_classes = num_classes
        first, second = channels
        self.layers = nn.Sequential(
            Normalize(mean, std, channels=in_channels),
            nn.Conv2d(in_channels, first, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(first, second, 4, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(),
            nn.Linear(second * (input_size // 4) ** 2, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
