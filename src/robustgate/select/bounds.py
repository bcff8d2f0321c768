"""The bound selector: keep an input for the branch where bound propagation certifies it.

Deployed at ``κ·eps``, it bounds the branch on ``B(x', κ·eps)`` around the input ``x'`` it sees
(IBP, CROWN-IBP, CROWN, or IBP or CROWN) and selects where the certified margin is positive.
It answers with the class it certified (``select_and_answer``), the branch's clean prediction,
so the branch does not run again on the inputs it selects. A plain forward computation, without
an attack: a composition whose selectors are all bound selectors exports as one program (IBP
without a forward pass of the branch; the CROWN methods with one, on every unit of the layers
they tighten: :meth:`BoundSelector.certified`).
Its stability is the evaluation's to count (``Selection.bounds``: IBP at ``(κ+1)·eps``).
"""

from __future__ import annotations

import torch
from torch import nn

from robustgate.certify import (
    BOUND_METHODS,
    certify_bounds,
    crown_certificates,
    interval_certificates,
    traced,
)
from robustgate.select.robustness import logit_margin
from robustgate.threat import ThreatModel


class BoundSelector(nn.Module):
    """Selects ``x`` where ``method`` certifies ``model`` on ``B(x, κ·eps)``."""

    def __init__(self, model: nn.Module, threat: ThreatModel, method: str = "ibp",
                 kappa: float = 1.0) -> None:
        super().__init__()
        if method not in BOUND_METHODS:
            raise ValueError(f"method must be one of {BOUND_METHODS}, got {method!r}")
        if not kappa >= 1:
            raise ValueError(f"kappa must be >= 1, got {kappa}")
        traced(model)  # refuses an operation without a rule now; the export finds it traced
        self.model = model
        self.threat = threat.scaled(kappa)
        self.method = method

    def __repr__(self) -> str:
        return f"BoundSelector(radius={self.threat.eps:g}, method={self.method!r})"

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """The branch's logit margin (a guide for attacks; the decision is the certificate)."""
        return logit_margin(self.model(x))

    def margin(self, x: torch.Tensor) -> torch.Tensor:
        """The certified margin on ``B(x, κ·eps)``; positive where the selector selects."""
        return certify_bounds(self.model, x, self.threat, self.method)[1]

    def select_and_answer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mask of :meth:`select` and, where it selects, the class certified there: the
        branch's clean prediction (elsewhere an answer that is never used), both on the CPU. By
        IBP without a forward pass of the branch (:meth:`certified`); by the CROWN methods with
        one on the inputs that the class pairs' interval bounds leave uncertified."""
        if self.method == "ibp":
            with torch.no_grad():
                selected, answers = self.certified(x)
        else:
            answers, margin = certify_bounds(self.model, x, self.threat, self.method)
            selected = margin > 0
        return selected.cpu(), answers.cpu()

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean mask on the CPU: ``True`` where the branch answers."""
        return self.select_and_answer(x)[0]

    def certified(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The selection and the certified class in the form that exports, on ``x``'s device:
        by IBP without a forward pass (``interval_certificates``; a class certified on the ball
        is the clean prediction, so it selects exactly where :meth:`margin` is positive), by
        the CROWN methods with one (``crown_certificates``: the same margins as :meth:`margin`
        up to floating-point summation order, at more cost per input)."""
        if self.method == "ibp":
            classes, margin = interval_certificates(self.model, x, self.threat)
        else:
            classes, margin = crown_certificates(self.model, x, self.threat, self.method)
        return margin > 0, classes
