"""The confidence selectors (``selector: softmax_response`` and ``selector: entropy``): the branch
answers where its confidence reaches a threshold (``select.ConfidenceSelector``)."""

from __future__ import annotations

import torch

from robustgate.attacks import Attack
from robustgate.select import ConfidenceSelector, Selector
from robustgate.selector_kinds.run import CompositionRun
from robustgate.selector_kinds.score import ScoreKind
from robustgate.threat import ThreatModel


class ConfidenceKind(ScoreKind):
    """The confidence selector of one measure (``select.MEASURES``)."""

    def __init__(self, measure: str, marker: str) -> None:
        self.name = measure
        self.marker = marker

    def selector(self, run: CompositionRun, branch: str) -> ConfidenceSelector:
        return ConfidenceSelector(run.models[branch], 0.0, self.name)

    def deploy(self, branch: torch.nn.Module, threat: ThreatModel, attack: Attack,
               threshold: float | None, coverage: float | None,
               calibration: torch.Tensor | None, kappa: float, form: str | None = None,
               ) -> Selector:
        if form is not None:
            raise ValueError(f"the {self.name} selector has no form {form!r}")
        if kappa != 1:
            raise ValueError(f"kappa is the robustness selector's radius factor; the "
                             f"{self.name} selector takes none (got {kappa})")
        if (threshold is None) == (coverage is None):
            raise ValueError(f"the {self.name} selector needs exactly one of --threshold and "
                             "--coverage")
        selector = ConfidenceSelector(branch, 0.0 if threshold is None else threshold,
                                      self.name)
        if coverage is not None:
            if calibration is None or len(calibration) == 0:
                raise ValueError("--coverage calibrates on the validation split: give "
                                 "--validation-size")
            selector.calibrate(calibration, coverage=coverage)
        return selector


SOFTMAX_RESPONSE = ConfidenceKind("softmax_response", "s")
ENTROPY = ConfidenceKind("entropy", "D")
