"""Confidence selectors: keep an input for the branch where the branch is confident.

- softmax response (Geifman & El-Yaniv): the highest softmax probability, here as its logarithm
  ``max_k log p_k(x)`` (same order, but confident inputs stay distinguishable in floating point);
- entropy: ``−H(p(x)) = Σ_k p_k log p_k`` (higher is more confident).

Thresholds come from validation data (``robustgate.select.calibration``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustgate.select.base import ThresholdSelector

MEASURES = ("softmax_response", "entropy")


def confidence(logits: torch.Tensor, measure: str) -> torch.Tensor:
    """Per-sample confidence of ``logits`` by ``measure`` (differentiable, float64)."""
    log_probs = F.log_softmax(logits.double(), dim=1)
    if measure == "softmax_response":
        return log_probs.max(dim=1).values
    if measure == "entropy":
        return (log_probs.exp() * log_probs).sum(dim=1)
    raise ValueError(f"unknown confidence measure {measure!r}; choose from {MEASURES}")


class ConfidenceSelector(ThresholdSelector):
    """Selects ``x`` where the branch's confidence (``measure``) is at least ``threshold``."""

    def __init__(self, model: nn.Module, threshold: float, measure: str = "softmax_response",
                 batch_size: int = 1000) -> None:
        if measure not in MEASURES:
            raise ValueError(f"unknown confidence measure {measure!r}; choose from {MEASURES}")
        super().__init__(model, threshold, batch_size)
        self.measure = measure

    def __repr__(self) -> str:
        return f"ConfidenceSelector({self.measure!r}, threshold={self.threshold:.6g})"

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return confidence(self.model(x), self.measure)
