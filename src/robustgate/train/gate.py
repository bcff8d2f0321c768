"""Training the learned gate (``select.GateSelector``) on data labelled with where the branch
should answer."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from robustgate.config import TrainConfig
from robustgate.losses import Standard
from robustgate.select import GateSelector
from robustgate.train.loop import fit


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
