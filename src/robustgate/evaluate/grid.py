"""Exact robustness of two-dimensional predictors, by a grid over the domain (DESIGN.md section 1:
how the counted form is checked).

Every model is evaluated once at every point of a regular grid over ``[low, high]²``; a predictor
is robust at a grid point when its label is the same at every grid point of the Linf ball
around it (the ball intersected with the domain: a maximum filter per class). The deployed
composition is computed the same way: its robustness selector selects a grid point where the
branch's labels are constant on the ball of ``κ·eps`` around it, exactly as the deployed
selector with an exact check would. Up to the grid's resolution the result is the truth, against
which an attack (an upper bound) and the counted form (a lower bound) are held; two resolutions
that agree show the resolution is fine enough.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy.ndimage import maximum_filter
from torch import nn

from robustgate.config import CompositionSettings
from robustgate.evaluate.metrics import robustness_metrics
from robustgate.evaluate.records import Records
from robustgate.models.modes import predict_logits
from robustgate.threat import ThreatModel


class Grid:
    """The grid of spacing ``step`` over the domain of ``threat`` (Linf, two features)."""

    def __init__(self, threat: ThreatModel, step: float) -> None:
        if threat.norm != "linf":
            raise ValueError(f"the exact grid computation is for linf balls, got {threat.norm!r}")
        if not 0 < step < threat.high - threat.low:
            raise ValueError(f"step must be in (0, {threat.high - threat.low}), got {step}")
        self.threat = threat
        self.size = int(round((threat.high - threat.low) / step)) + 1
        self.step = (threat.high - threat.low) / (self.size - 1)
        axis = torch.linspace(threat.low, threat.high, self.size)
        rows, columns = torch.meshgrid(axis, axis, indexing="ij")
        self.points = torch.stack([rows.flatten(), columns.flatten()], dim=1)

    def labels(self, model: nn.Module) -> np.ndarray:
        """``ŷ`` at every grid point, shaped ``(size, size)``."""
        logits = predict_logits(model, self.points.to(torch.float32))
        return logits.argmax(dim=1).cpu().numpy().reshape(self.size, self.size)

    def constant(self, labels: np.ndarray, radius: float) -> np.ndarray:
        """Where ``labels`` take one value on the ball of ``radius`` around each grid point."""
        reach = int(np.floor(radius / self.step + 1e-9))
        present = np.zeros(labels.shape, dtype=np.int64)
        for value in np.unique(labels):
            present += maximum_filter((labels == value).astype(np.uint8), size=2 * reach + 1,
                                      mode="constant", cval=0)
        return present == 1

    def index(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The nearest grid point of every input (row and column indices)."""
        if x.ndim != 2 or x.shape[1] != 2:
            raise ValueError(f"the grid is two-dimensional; got inputs of shape {tuple(x.shape)}")
        cells = ((x.cpu().double() - self.threat.low) / self.step).round().long()
        cells = cells.clamp(0, self.size - 1).numpy()
        return cells[:, 0], cells[:, 1]

    def snap(self, x: torch.Tensor) -> torch.Tensor:
        """Every input moved to its nearest grid point (where the grid's answers are exact)."""
        rows, columns = self.index(x)
        return self.points[rows * self.size + columns].to(x.dtype)

    def composition(self, branch: nn.Module, core: nn.Module, kappa: float = 1.0,
                    select: Callable[[torch.Tensor], torch.Tensor] | None = None) -> np.ndarray:
        """The deployed composition's labels on the grid: the branch where it is exactly robust
        on ``B(x', κ·eps)`` (``κ = kappa``), or where ``select`` (a deployed selector's
        decision, when it is a plain computation such as a certificate) selects the grid point,
        else the core."""
        branch_labels = self.labels(branch)
        if select is None:
            selected = self.constant(branch_labels, kappa * self.threat.eps)
        else:
            selected = select(self.points.to(torch.float32)).numpy().reshape(
                self.size, self.size)
        return np.where(selected, branch_labels, self.labels(core))

    def robustness(self, labels: np.ndarray, x: torch.Tensor, radius: float | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
        """Predictions and exact robustness on the ball of ``radius`` (``eps`` by default) of the
        predictor whose grid labels are ``labels``, at the grid points nearest to ``x``."""
        rows, columns = self.index(x)
        robust = self.constant(labels, self.threat.eps if radius is None else radius)
        return labels[rows, columns], robust[rows, columns]

    def exact_compositions(self, compositions: dict[str, tuple[CompositionSettings, float]],
                           models: dict[str, nn.Module],
                           data: dict[str, tuple[torch.Tensor, torch.Tensor]]
                           ) -> dict[str, dict[str, dict[str, float]]]:
        """``{split: {composition: metrics}}``: the exact natural and robust accuracy of every
        one-branch robustness-selector composition (by label: its settings and deployed ``κ``),
        on the grid points nearest each split's data."""
        exact: dict[str, dict[str, dict[str, float]]] = {split: {} for split in data}
        for composition, kappa in compositions.values():
            labels = self.composition(models[composition.branches[0]],
                                      models[composition.core], kappa)
            for split, (x, y) in data.items():
                predictions, robust = self.robustness(labels, x)
                exact[split][composition.label] = robustness_metrics(predictions == y.numpy(),
                                                                     robust)
        return exact

    def records(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                radii: Sequence[float]) -> Records:
        """Exact per-sample records of ``model`` at every radius of ``radii``."""
        labels = self.labels(model)
        predictions = self.robustness(labels, x)[0]
        return Records(y.cpu().numpy(), predictions,
                       {radius: self.robustness(labels, x, radius)[1] for radius in radii})
