"""The selector interface: ``select(x) -> mask`` (``True``: the branch answers) and a
differentiable ``score(x)`` that grows where the selector selects.

A score-based selector selects exactly where ``score(x) >= threshold``; the robustness selector's
decision is a robustness check, and its score (the branch's logit margin) only guides attacks.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from robustgate.inputs import check_inputs
from robustgate.models.modes import eval_mode, model_device
from robustgate.select.calibration import (
    threshold_for_composed_accuracy,
    threshold_for_coverage,
    threshold_for_selective_accuracy,
)


class Selector(Protocol):
    def select(self, x: torch.Tensor) -> torch.Tensor: ...

    def score(self, x: torch.Tensor) -> torch.Tensor: ...


class ThresholdSelector:
    """Selects ``x`` where ``score(x) >= threshold``; subclasses define ``score`` on ``model``."""

    def __init__(self, model: nn.Module, threshold: float, batch_size: int = 1000) -> None:
        if not isinstance(threshold, (int, float)) or threshold != threshold:
            raise ValueError(f"threshold must be a number, got {threshold!r}")
        self.model = model
        self.threshold = float(threshold)
        self.batch_size = batch_size

    def __repr__(self) -> str:
        return f"{type(self).__name__}(threshold={self.threshold:.6g})"

    def score(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """``score`` on a whole data set: batched, in eval mode, without gradients, on the CPU
        (float64)."""
        check_inputs(x, getattr(self.model, "input_shape", None))
        device = model_device(self.model)
        with eval_mode(self.model), torch.no_grad():
            batches = [self.score(x[start : start + self.batch_size].to(device)).cpu()
                       for start in range(0, len(x), self.batch_size)]
        return torch.cat(batches).double() if batches else torch.empty(0, dtype=torch.float64)

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean mask on the CPU: ``True`` where the branch answers."""
        return self.scores(x) >= self.threshold

    def calibrate(self, x: torch.Tensor, branch_accurate: np.ndarray | None = None,
                  core_accurate: np.ndarray | None = None, *, coverage: float | None = None,
                  selective_accuracy: float | None = None,
                  composed_accuracy: float | None = None) -> dict[str, Any]:
        """Set the threshold on the validation inputs ``x`` by one rule (``select.calibration``):
        a ``coverage``, a ``selective_accuracy`` of the branch (``branch_accurate`` per input) or
        a ``composed_accuracy`` of the composition (``core_accurate`` too); returns the threshold,
        the rule and the number of inputs."""
        rules = {"coverage": coverage, "selective_accuracy": selective_accuracy,
                 "composed_accuracy": composed_accuracy}
        given = {name: value for name, value in rules.items() if value is not None}
        if len(given) != 1:
            raise ValueError(f"calibrate by exactly one of {sorted(rules)}, got {sorted(given)}")
        scores = self.scores(x).numpy()
        if coverage is not None:
            threshold = threshold_for_coverage(scores, coverage)
        elif branch_accurate is None or (composed_accuracy is not None and core_accurate is None):
            raise ValueError("an accuracy rule needs the branch's (and for the composed "
                             "accuracy the core's) accuracy on the calibration inputs")
        elif selective_accuracy is not None:
            threshold = threshold_for_selective_accuracy(scores, branch_accurate,
                                                         selective_accuracy)
        else:
            threshold = threshold_for_composed_accuracy(scores, branch_accurate, core_accurate,
                                                        composed_accuracy)
        self.threshold = threshold
        return {"threshold": threshold, "calibrated_for": given, "calibration_samples":
                len(scores)}
