"""A small fully connected ReLU network (the paper's MiniNet for 2-D data)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """``in_features -> hidden[0] -> ... -> hidden[-1] -> num_classes`` with ReLU in between.

    ``input_shape`` and ``num_classes`` are exposed so that callers can validate inputs and
    check that composed models agree on the label set.
    """

    def __init__(
        self, in_features: int = 2, num_classes: int = 3, hidden: Sequence[int] = (64, 64, 64)
    ) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 2 or any(width < 1 for width in hidden):
            raise ValueError(
                f"MLP needs in_features >= 1, num_classes >= 2 and positive widths; got "
                f"in_features={in_features}, num_classes={num_classes}, hidden={tuple(hidden)}"
            )
        self.input_shape = (in_features,)
        self.num_classes = num_classes
        widths = [in_features, *hidden]
        layers: list[nn.Module] = []
        for width_in, width_out in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], num_classes))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1))
