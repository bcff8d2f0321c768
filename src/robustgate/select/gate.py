"""A learned gate (the selection network of compositional architectures such as ACE): a small
network trained on validation data to predict where the branch is robust and accurate.

The gate is a two-class classifier (0 abstain, 1 select); its score is the logit difference
``g_1(x) − g_0(x)`` and it selects where the score reaches the threshold.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from robustgate.losses import Standard
from robustgate.select.base import ThresholdSelector
from robustgate.train.loop import TrainConfig, fit


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


def train_gate(
    gate: nn.Module, x: torch.Tensor, target: np.ndarray | torch.Tensor, config: TrainConfig,
    progress: bool = True,
) -> GateSelector:
    """Train ``gate`` (a two-class network) in place to predict ``target`` (``True`` where the
    branch should answer, e.g. robust and accurate at the selector's radius) on ``x``; returns
    the selector at threshold 0 (calibrate it on held-out data)."""
    target = torch.as_tensor(np.asarray(target, dtype=bool), dtype=torch.int64)
    if target.shape != (len(x),):
        raise ValueError(f"target must hold one flag per input: {len(x)} inputs, target shape "
                         f"{tuple(target.shape)}")
    if len(target.unique()) < 2:
        raise ValueError("the gate's target holds one class only; there is nothing to learn "
                         "(use more data or another selector)")
    fit(gate, Standard(), x, target, config, progress=progress, description="gate")
    return GateSelector(gate)
