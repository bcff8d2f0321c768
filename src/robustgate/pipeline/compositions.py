"""Compositions of an experiment: build each selector (calibrated on validation data), evaluate
the composition offline in the sound form and end to end with the adaptive attack.

Files in the run directory: ``records/validation/<branch>.csv`` (the branch's robustness at eps
on the calibration data), ``models/gates/<branch>.safetensors`` (learned gates),
``selection/<composition>.csv`` (per test input: the selector's score where it has one, and the
route: ``0`` … for the branches, ``len(branches)`` for the core), ``records/composed/
<composition>.csv`` (the composition's records in the sound form) and
``records/adaptive/<composition>.csv`` (per-sample records under the adaptive attack, or under the
evaluation attack for the mixing baseline) with ``<composition>.candidates.json`` beside (how
many inputs each candidate of the adaptive attack broke first).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robustgate.attacks import Attack
from robustgate.compose import ComposedClassifier
from robustgate.config import CompositionSettings, ExperimentConfig
from robustgate.evaluate import (
    AdaptiveAttack,
    Records,
    Routes,
    Selection,
    area_under_risk_coverage,
    evaluate_or_resume,
    robustness_metrics,
)
from robustgate.evaluate.composition import compare_with_attack, composition_metrics
from robustgate.evaluate.operating_points import choose_kappa, operating_curve, sweep_radii
from robustgate.evaluate.sanity import sanity_checks
from robustgate.io import atomic_write_json, file_name
from robustgate.models import (
    MixedClassifier,
    build_model,
    choose_mixing_weight,
    load_checkpoint,
    predict_logits,
    save_checkpoint,
)
from robustgate.pipeline.run_directory import say
from robustgate.select import (
    ConfidenceSelector,
    GateSelector,
    RobustnessSelector,
    ThresholdSelector,
)
from robustgate.threat import ThreatModel
from robustgate.train import train_gate

Data = tuple[torch.Tensor, torch.Tensor]


@dataclass
class CompositionEvaluator:
    """Evaluates the compositions of ``config`` from the trained ``models`` and their test
    ``records``; ``validation`` is the validation split (thresholds, gates, mixing weights)."""

    config: ExperimentConfig
    out: Path
    models: dict[str, nn.Module]
    records: dict[str, Records]
    test: Data
    validation: Data | None
    threat: ThreatModel
    attack: Attack
    device: torch.device
    progress: bool = True

    # -- calibration data --------------------------------------------------------------------

    def _calibration(self) -> Data:
        if self.validation is None:
            raise ValueError("calibrated selectors need validation data: set "
                             "data.validation_size")
        limit = self.config.calibration.limit
        return self.validation[0][:limit], self.validation[1][:limit]

    def _gate_count(self) -> int:
        return int(self.config.calibration.gate.share * len(self._calibration()[1]))

    def _validation_records(self, name: str) -> Records:
        """A model's records on the calibration data (resumable): at eps, and for a branch
        whose operating point is chosen there, at every radius of its sweep."""
        kappas = [kappa for c in self.config.compositions
                  if c.selector == "robustness" and c.operating_point is not None
                  and name in c.branches for kappa in c.kappas]
        radii = sweep_radii(self.threat.eps, kappas)
        path = self.out / "records" / "validation" / f"{name}.csv"
        x, y = self._calibration()
        if not path.exists():
            say(f"[{name}] robustness at {', '.join(f'{r:g}' for r in radii)} on {len(y)} "
                "validation points", self.progress)
        return evaluate_or_resume(path, self.models[name], x, y, self.threat, radii,
                                  self.attack, batch_size=self.config.evaluation.batch_size,
                                  progress=self.progress, description=f"{name}/validation")

    def _calibration_part(self) -> slice:
        return slice(self._gate_count(), None)

    def _matching_accuracy(self, branch: str, core: str) -> float:
        """The robustness selector's composed natural accuracy on the calibration part."""
        x, y = self._calibration()
        part = self._calibration_part()
        records = self._validation_records(branch)
        core_accurate = (predict_logits(self.models[core], x).argmax(1) == y).numpy()
        selected = records.robust_at(self.threat.eps)
        composed = np.where(selected, records.accurate, core_accurate)
        return float(composed[part].mean())

    def _kappa(self, composition: CompositionSettings) -> tuple[float, dict[str, Any]]:
        """The robustness selector's ``κ``: as configured, or chosen on the calibration data for
        the operating point (``evaluate.operating_points``)."""
        point = composition.operating_point
        if point is None:
            return composition.kappa, {"kappa": composition.kappa}
        choice = choose_kappa(self._validation_records(composition.branches[0]),
                              self._validation_records(composition.core), self.threat.eps,
                              point.kappas, point.max_accuracy_drop)
        chosen = choice["chosen"]
        say(f"[{composition.label}] kappa {chosen['kappa']:g} chosen on the validation points"
            + ("" if chosen["meets_target"] else " (no kappa meets the target)"), self.progress)
        return chosen["kappa"], {"kappa": chosen["kappa"], "operating_point": choice}

    # -- selectors -----------------------------------------------------------------------------

    def _gate(self, branch: str) -> GateSelector:
        settings = self.config.calibration.gate
        spec = self.config.models[branch].model
        architecture = settings.architecture or spec.architecture
        arguments = {**(settings.arguments if settings.arguments is not None
                        else spec.arguments), "num_classes": 2}
        path = self.out / "models" / "gates" / f"{branch}.safetensors"
        if path.exists():
            gate, _ = load_checkpoint(path, self.device)
            return GateSelector(gate)
        x, y = self._calibration()
        count = self._gate_count()
        records = self._validation_records(branch)
        target = (records.accurate & records.robust_at(self.threat.eps))[:count]
        say(f"[{branch}] training the gate on {count} validation points "
            f"({100 * target.mean():.1f}% robust and accurate)", self.progress)
        torch.manual_seed(self.config.seed)
        gate = build_model(architecture, arguments).to(self.device)
        selector = train_gate(gate, x[:count], target, settings.train.build(self.config.seed),
                              progress=self.progress)
        save_checkpoint(path, gate, architecture, arguments, {"gate_for": branch})
        return selector

    def _threshold_selector(self, composition: CompositionSettings, branch: str
                            ) -> tuple[ThresholdSelector, dict[str, Any]]:
        if composition.selector == "gate":
            selector: ThresholdSelector = self._gate(branch)
        else:
            selector = ConfidenceSelector(self.models[branch], 0.0, composition.selector)
        x, y = self._calibration()
        part = self._calibration_part()
        branch_accurate = (predict_logits(self.models[branch], x[part]).argmax(1)
                           == y[part]).numpy()
        if composition.coverage is not None or composition.selective_accuracy is not None:
            info = selector.calibrate(x[part], branch_accurate, coverage=composition.coverage,
                                      selective_accuracy=composition.selective_accuracy)
        else:
            core_accurate = (predict_logits(self.models[composition.core], x[part]).argmax(1)
                             == y[part]).numpy()
            info = selector.calibrate(
                x[part], branch_accurate, core_accurate,
                composed_accuracy=self._matching_accuracy(branch, composition.core))
        return selector, info

    # -- evaluation ----------------------------------------------------------------------------

    def evaluate(self, composition: CompositionSettings) -> dict[str, Any]:
        """Metrics of one composition (sound form on the test set, adaptive attack on the
        first ``adaptive.limit`` test points); writes the selection and adaptive records."""
        if composition.selector == "mixing":
            return self._evaluate_mixing(composition)
        branches = composition.branches
        if len(branches) > 1 and composition.selector != "robustness":
            raise ValueError(f"composition {composition.label!r}: chains use robustness "
                             "selectors only")
        x, _ = self.test
        eps = self.threat.eps
        parts = [self.records[name] for name in branches]
        scores = None
        if composition.selector == "robustness":
            kappa, info = self._kappa(composition)
            selectors = [RobustnessSelector(self.models[name], self.threat, self.attack, kappa,
                                            self.config.evaluation.batch_size)
                         for name in branches]
            selections = [Selection.robustness(part, eps, kappa) for part in parts]
        else:
            selector, info = self._threshold_selector(composition, branches[0])
            scores = selector.scores(x).numpy()
            selectors = [selector]
            selections = [Selection.scores(parts[0], scores >= selector.threshold, eps)]
        core = self.records[composition.core]
        counted, composed_records, routes = composition_metrics(parts, core, selections)
        Routes(routes, scores).to_csv(self.out / "selection"
                                      / f"{file_name(composition.label)}.csv")
        composed_records.to_csv(self.out / "records" / "composed"
                                / f"{file_name(composition.label)}.csv")
        metrics: dict[str, Any] = {**counted, **info}
        if composition.operating_point is not None:
            metrics["operating_point"]["test_curve"] = operating_curve(
                parts[0], core, eps, composition.operating_point.kappas)
        if scores is not None:
            metrics["aurc"] = area_under_risk_coverage(scores, parts[0].accurate)
        composed = ComposedClassifier.chain(
            [(self.models[name], sel) for name, sel in zip(branches, selectors, strict=True)],
            self.models[composition.core])
        metrics["adaptive"] = self._adaptive(composition.label, composed, composed_records)
        return metrics

    def _attacked(self, label: str, model: Any, attack: Any) -> Records | None:
        """Records of ``model`` (a composition or the mixed model) under ``attack`` on the first
        ``adaptive.limit`` test points (resumable)."""
        limit = min(self.config.adaptive.limit, len(self.test[1]))
        if limit == 0:
            return None
        path = self.out / "records" / "adaptive" / f"{file_name(label)}.csv"
        if not path.exists():
            say(f"[{label}] attacking the whole system on {limit} test points", self.progress)
        return evaluate_or_resume(path, model, self.test[0][:limit], self.test[1][:limit],
                                  self.threat, [self.threat.eps], attack,
                                  batch_size=self.config.evaluation.batch_size,
                                  progress=self.progress, description=f"{label}/adaptive")

    def _adaptive(self, label: str, composed: ComposedClassifier, counted: Records
                  ) -> dict[str, Any] | None:
        attack = AdaptiveAttack(**self.config.adaptive.attack_options(), seed=self.config.seed)
        attacked = self._attacked(label, composed, attack)
        if attacked is None:
            return None
        candidates_path = self.out / "records" / "adaptive" / f"{file_name(label)}.candidates.json"
        if not candidates_path.exists():
            atomic_write_json(candidates_path, attack.candidate_counts)
        return {
            **compare_with_attack(attacked, counted, self.threat.eps),
            "attack": repr(attack),
            # which candidate broke each input first (of the attacks that wrote the records)
            "candidates": json.loads(candidates_path.read_text()),
            "sanity": self._sanity(label, composed, attack),
        }

    def _sanity(self, label: str, composed: ComposedClassifier, attack: AdaptiveAttack
                ) -> dict[str, Any] | None:
        """The sanity checks (``evaluate.sanity``) on the first ``adaptive.sanity`` test points,
        computed once and kept beside the adaptive records."""
        settings = self.config.adaptive
        limit = min(settings.sanity, len(self.test[1]))
        if limit == 0:
            return None
        path = self.out / "records" / "adaptive" / f"{file_name(label)}.sanity.json"
        if not path.exists():
            say(f"[{label}] sanity checks on {limit} test points", self.progress)
            atomic_write_json(path, sanity_checks(
                composed, self.test[0][:limit], self.test[1][:limit], self.threat, attack,
                settings.square_queries, seed=self.config.seed,
                batch_size=self.config.evaluation.batch_size))
        return json.loads(path.read_text())

    def _evaluate_mixing(self, composition: CompositionSettings) -> dict[str, Any]:
        branches = composition.branches
        if len(branches) > 1 or composition.coverage or composition.selective_accuracy:
            raise ValueError(f"composition {composition.label!r}: mixing takes one branch and "
                             "never abstains (no coverage or selective accuracy)")
        branch, core = branches[0], composition.core
        settings = self.config.calibration.mixing
        x, y = self._calibration()
        part = self._calibration_part()
        target = self._matching_accuracy(branch, core)
        weight = choose_mixing_weight(
            predict_logits(self.models[core], x[part]), predict_logits(self.models[branch],
                                                                        x[part]),
            y[part], target, weights=settings.weights, scale=settings.scale,
            power=settings.power, shift=settings.shift)
        mixed = MixedClassifier(self.models[core], self.models[branch], weight,
                                settings.scale, settings.power, settings.shift)
        natural = (predict_logits(mixed, self.test[0]).argmax(1) == self.test[1]).numpy()
        attacked = self._attacked(composition.label, mixed, self.attack)
        metrics: dict[str, Any] = {"natural_accuracy": float(natural.mean()), "weight": weight,
                                   "calibrated_for": {"composed_accuracy": target}}
        if attacked is not None:
            partition = robustness_metrics(attacked.accurate, attacked.robust_at(self.threat.eps))
            del partition["natural_accuracy"]  # of the attacked subset; the test set's is above
            metrics.update({**partition, "adaptive": {
                **compare_with_attack(attacked, None, self.threat.eps),
                "attack": repr(self.attack)}})
        return metrics
