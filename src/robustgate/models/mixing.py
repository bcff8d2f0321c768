"""Soft mixing of a standard and a robust model (the training-free baseline of Adaptive
Smoothing and MixedNUTS): never abstains, so it is attacked as one model.

    mixed(x) = log( (1 − α) · softmax(f_std(x)) + α · softmax(h(f_rob(x))) )

``h`` scales the robust model's logits by ``scale``; with a ``shift`` it is MixedNUTS's
nonlinear map ``scale · clamp(GELU(LN(z) + shift), 0) ** power`` (``LN`` standardizes the logits
of each input), which raises the robust model's confidence where its margin is large.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def transform_logits(
    logits: torch.Tensor, scale: float = 1.0, power: float = 1.0, shift: float | None = None
) -> torch.Tensor:
    """``h(z)``: ``scale · z``, or MixedNUTS's map when ``shift`` is given."""
    if shift is None:
        return scale * logits
    standardized = (logits - logits.mean(dim=1, keepdim=True)) / (
        logits.std(dim=1, keepdim=True) + 1e-6
    )
    return scale * F.gelu(standardized + shift).clamp_min(0) ** power


def mix(
    standard_logits: torch.Tensor, robust_logits: torch.Tensor, weight: float,
    scale: float = 1.0, power: float = 1.0, shift: float | None = None,
) -> torch.Tensor:
    """Log-probabilities of the mixture; ``weight`` is ``α``, the robust model's share."""
    robust_probs = F.softmax(transform_logits(robust_logits, scale, power, shift), dim=1)
    mixture = (1 - weight) * F.softmax(standard_logits, dim=1) + weight * robust_probs
    return mixture.clamp_min(1e-30).log()


class MixedClassifier(nn.Module):
    """``standard`` and ``robust`` mixed with the robust model's weight ``weight`` (``α``)."""

    def __init__(self, standard: nn.Module, robust: nn.Module, weight: float,
                 scale: float = 1.0, power: float = 1.0, shift: float | None = None) -> None:
        super().__init__()
        if not 0 <= weight <= 1:
            raise ValueError(f"the mixing weight must lie in [0, 1], got {weight}")
        if not (scale > 0 and power > 0):
            raise ValueError(f"scale and power must be > 0, got {scale=}, {power=}")
        self.standard, self.robust = standard, robust
        self.weight, self.scale, self.power, self.shift = weight, scale, power, shift
        for attribute in ("num_classes", "input_shape"):
            if hasattr(standard, attribute):
                setattr(self, attribute, getattr(standard, attribute))

    def extra_repr(self) -> str:
        return f"weight={self.weight:g}, scale={self.scale:g}, power={self.power:g}, " \
               f"shift={self.shift}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mix(self.standard(x), self.robust(x), self.weight, self.scale, self.power,
                   self.shift)


def choose_mixing_weight(
    standard_logits: torch.Tensor, robust_logits: torch.Tensor, labels: torch.Tensor,
    natural_accuracy: float, weights: Sequence[float], scale: float = 1.0, power: float = 1.0,
    shift: float | None = None,
) -> float:
    """The largest weight (the most robust mixture) of ``weights`` whose natural accuracy on the
    validation logits is at least ``natural_accuracy``; 0 (the standard model) if none is."""
    if not 0 < natural_accuracy <= 1:
        raise ValueError(f"natural_accuracy must lie in (0, 1], got {natural_accuracy}")
    best = 0.0
    for weight in sorted(weights):
        predicted = mix(standard_logits, robust_logits, weight, scale, power, shift).argmax(1)
        if float((predicted == labels).float().mean()) >= natural_accuracy - 1e-12:
            best = weight
    return best
