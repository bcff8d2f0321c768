"""Shared test helpers: linear classifiers, whose exact robustness radius is known."""

from __future__ import annotations

import torch
from torch import nn


class Linear(nn.Module):
    """``f(x) = W x + b`` with the attributes robustgate models expose."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)
        self.input_shape = (weight.shape[1],)
        self.num_classes = weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def random_linear(num_classes: int, dim: int, seed: int) -> Linear:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(num_classes, dim, generator=generator)
    bias = -weight.sum(dim=1) * 0.5 + 0.1 * torch.randn(num_classes, generator=generator)
    return Linear(weight, bias)


def exact_radius(model: Linear, x: torch.Tensor, norm: str) -> torch.Tensor:
    """Distance to the decision boundary of a linear classifier (no domain constraint):
    ``min_j (f_ŷ − f_j) / ||w_ŷ − w_j||_dual``, the dual of linf being l1 and of l2 itself."""
    weight, bias = model.linear.weight.detach(), model.linear.bias.detach()
    logits = x @ weight.T + bias
    predicted = logits.argmax(dim=1)
    margins = logits.gather(1, predicted.view(-1, 1)) - logits
    differences = weight[predicted].unsqueeze(1) - weight.unsqueeze(0)
    dual = differences.abs().sum(dim=2) if norm == "linf" else differences.norm(dim=2)
    ratios = margins / dual.clamp_min(1e-12)
    ratios[torch.arange(len(x)), predicted] = torch.inf
    return ratios.min(dim=1).values
