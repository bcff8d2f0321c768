"""Input normalization as the first layer of a model, so that inputs stay in ``[0, 1]``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel (dimension 1 of the batch).

    ``mean`` and ``std`` are scalars or sequences of one value per channel (or feature, for
    ``(n, d)`` inputs); a single value applies to every channel. They are stored as buffers of
    shape ``(1, C, 1, 1)``, so they move with the model and are saved in its state dict. If
    ``channels`` is given, ``mean`` and ``std`` must hold 1 or ``channels`` values and ``C`` is
    ``channels``; otherwise ``C`` is the longer of the two.
    """

    def __init__(
        self,
        mean: float | Sequence[float],
        std: float | Sequence[float],
        channels: int | None = None,
    ) -> None:
        super().__init__()
        means = [float(value) for value in _as_sequence(mean)]
        stds = [float(value) for value in _as_sequence(std)]
        size = max(len(means), len(stds))
        if not means or not stds or {len(means), len(stds)} - {1, size}:
            raise ValueError(
                f"Normalize needs mean and std of equal length (or one of length 1); got "
                f"mean={tuple(means)}, std={tuple(stds)}"
            )
        if channels is not None:
            if size not in (1, channels):
                raise ValueError(
                    f"Normalize for {channels} channels needs 1 or {channels} values; got "
                    f"mean={tuple(means)}, std={tuple(stds)}"
                )
            size = channels
        if not all(math.isfinite(value) for value in means) or not all(
            math.isfinite(value) and value > 0 for value in stds
        ):
            raise ValueError(
                f"Normalize needs finite means and positive finite stds; got "
                f"mean={tuple(means)}, std={tuple(stds)}"
            )
        self.register_buffer("mean", _channel_tensor(means, size))
        self.register_buffer("std", _channel_tensor(stds, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.mean.shape[1]
        if x.dim() < 2 or (size > 1 and x.shape[1] != size):
            raise ValueError(
                f"Normalize holds {size} per-channel values but got a batch of shape "
                f"{tuple(x.shape)} (channels are dimension 1)"
            )
        shape = (1, size) + (1,) * (x.dim() - 2)
        return (x - self.mean.view(shape)) / self.std.view(shape)

    def extra_repr(self) -> str:
        mean = [round(value, 6) for value in self.mean.flatten().tolist()]
        std = [round(value, 6) for value in self.std.flatten().tolist()]
        return f"mean={mean}, std={std}"


def _as_sequence(values: float | Sequence[float]) -> Sequence[float]:
    return [values] if isinstance(values, (int, float)) else values


def _channel_tensor(values: list[float], size: int) -> torch.Tensor:
    """``values`` (1 or ``size`` of them) as a float32 tensor of shape ``(1, size, 1, 1)``."""
    return torch.tensor(values * (size // len(values)), dtype=torch.float32).view(1, size, 1, 1)
