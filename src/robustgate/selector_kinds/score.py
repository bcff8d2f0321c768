"""Kinds whose decision is a score against a threshold (confidence measures, a learned gate): the
threshold is set on validation data, for a ``coverage`` or a ``selective_accuracy`` when given,
else to match the composed natural accuracy of the robustness selector on the same branch.

An adversary moves such a decision freely: counted as both parts robust and right
(``Selection.scores``), with the area under the risk–coverage curve of the score beside.
"""

from __future__ import annotations

from typing import Any

from robustgate.config import CompositionSettings
from robustgate.evaluate import Selection, area_under_risk_coverage
from robustgate.evaluate.results import CompositionResult
from robustgate.select import ThresholdSelector
from robustgate.selector_kinds.base import SelectorKind
from robustgate.selector_kinds.run import CompositionRun


class ScoreKind(SelectorKind):
    """A kind of threshold selector; subclasses build the selector (:meth:`selector`)."""

    def selector(self, run: CompositionRun, branch: str) -> ThresholdSelector:
        raise NotImplementedError

    def calibrated(self, run: CompositionRun, composition: CompositionSettings
                   ) -> tuple[ThresholdSelector, dict[str, Any]]:
        """The selector with its threshold set on the calibration part of the validation
        data, and how it was set."""
        branch, core = composition.branches[0], composition.core
        selector = self.selector(run, branch)
        x, y = run.calibration()
        part = run.calibration_part()
        branch_accurate = run.accurate(branch, x[part], y[part])
        if composition.coverage is not None or composition.selective_accuracy is not None:
            info = selector.calibrate(x[part], branch_accurate, coverage=composition.coverage,
                                      selective_accuracy=composition.selective_accuracy)
        else:
            info = selector.calibrate(
                x[part], branch_accurate, run.accurate(core, x[part], y[part]),
                composed_accuracy=run.matching_accuracy(branch, core))
        return selector, info

    def evaluate(self, run: CompositionRun, composition: CompositionSettings
                 ) -> CompositionResult:
        selector, info = self.calibrated(run, composition)
        branch = run.records[composition.branches[0]]
        scores = selector.scores(run.test[0]).numpy()
        selection = Selection.scores(branch, scores >= selector.threshold, run.eps)
        result = run.count(composition, [selection], [selector], scores)
        result.threshold = info.pop("threshold")
        result.aurc = area_under_risk_coverage(scores, branch.accurate)
        result.extras.update(info)
        return result
