"""The soft mixing baseline (``selector: mixing``): no selector at all, the branch's and the core's
logits mixed (``models.MixedClassifier``) with a weight chosen on validation data to match the
robustness selector's composed natural accuracy. It never abstains, so nothing is counted: the
mixed model is attacked whole with the evaluation attack on the adaptive subset."""

from __future__ import annotations

from robustgate.config import CompositionSettings
from robustgate.evaluate import robustness_metrics
from robustgate.evaluate.results import AttackComparison, MixingResult
from robustgate.evaluate.sound_count import compare_with_attack
from robustgate.models import MixedClassifier, choose_mixing_weight, predict_logits
from robustgate.selector_kinds.base import SelectorKind
from robustgate.selector_kinds.run import CompositionRun


class MixingKind(SelectorKind):
    name = "mixing"
    result_type = MixingResult
    marker = "P"

    def evaluate(self, run: CompositionRun, composition: CompositionSettings) -> MixingResult:
        if composition.coverage or composition.selective_accuracy:
            raise ValueError(f"composition {composition.label!r}: mixing takes one branch and "
                             "never abstains (no coverage or selective accuracy)")
        branch, core = composition.branches[0], composition.core
        settings = run.config.calibration.mixing
        x, y = run.calibration()
        part = run.calibration_part()
        target = run.matching_accuracy(branch, core)
        weight = choose_mixing_weight(
            predict_logits(run.models[core], x[part]),
            predict_logits(run.models[branch], x[part]), y[part], target,
            weights=settings.weights, scale=settings.scale, power=settings.power,
            shift=settings.shift)
        mixed = MixedClassifier(run.models[core], run.models[branch], weight, settings.scale,
                                settings.power, settings.shift)
        natural = (predict_logits(mixed, run.test[0]).argmax(1) == run.test[1]).numpy()
        attacked, _ = run.attacked(composition.label, mixed, run.attack)
        result = MixingResult(float(natural.mean()), extras={
            "weight": weight, "calibrated_for": {"composed_accuracy": target}})
        if attacked is not None:
            partition = robustness_metrics(attacked.accurate, attacked.robust_at(run.eps))
            result.robust_accuracy = partition["robust_accuracy"]
            result.robust_inaccuracy = partition["robust_inaccuracy"]
            result.non_robust = partition["non_robust"]
            # its natural accuracy is the test set's, not the attacked subset's
            result.adaptive = AttackComparison(**compare_with_attack(attacked, None, run.eps),
                                               attack=repr(run.attack))
        return result


MIXING = MixingKind()
