"""A learned gate (the selection network of compositional architectures such as ACE): a small
network trained on validation data to predict where the branch is robust and accurate
(``train.train_gate``).

The gate is a two-class classifier (0 abstain, 1 select); its score is the logit difference
``g_1(x) − g_0(x)`` and it selects where the score reaches the threshold.
"""

from __future__ import annotations

import torch
from torch import nn

from robustgate.select.base import ThresholdSelector


class GateSelector(ThresholdSelector):
    """Selects ``x`` where ``gate(x)_1 − gate(x)_0 >= threshold``."""

    def __init__(self, gate: nn.Module, threshold: float = 0.0, batch_size: int = 1000) -> None:
        classes = getattr(gate, "num_classes", 2)
        if classes != 2:
            raise ValueError(f"a gate is a two-class network (abstain, select), got {classes} "
                             "classes")
        super().__init__(gate, threshold, batch_size)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        return logits[:, 1] - logits[:, 0]
