"""What a selector kind counts a composition of an experiment from: the run's trained models, its
per-sample records and certificates on the test points, the validation split it calibrates on,
and the files it writes beside them.

Files in the run directory: ``records/validation/<model>.csv`` (records on the calibration
points), ``selection/<composition>.csv`` (routes and scores), ``records/composed/<composition>.csv``
(the composition's records in the sound form), ``records/certified/<composition>.csv`` (a
certified composition's records), ``records/cascade/<composition>.<branch>.csv`` (a cascade's
decisions on the test points, robust where it selects, with ``.decided.json``, the inputs each
stage decided), and ``records/adaptive/<composition>.csv`` (per-sample records
under the adaptive attack, or under the evaluation attack for a model attacked whole) with
``<composition>.candidates.json`` beside (how many inputs each candidate of the adaptive attack
broke first).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robustgate.attacks import Attack
from robustgate.compose import ComposedClassifier
from robustgate.config import CompositionSettings, ExperimentConfig
from robustgate.distributed import ALONE, Crew, Process, Result
from robustgate.evaluate import (
    AdaptiveAttack,
    BoundCertificates,
    Certificates,
    Records,
    Routes,
    Selection,
    compose_records,
    evaluate_or_resume,
    selection_metrics,
)
from robustgate.evaluate.results import (
    AdaptiveComparison,
    CertifiedCompositionResult,
    CompositionResult,
)
from robustgate.evaluate.sanity import sanity_checks
from robustgate.evaluate.sound_count import compare_with_attack, composition_metrics
from robustgate.evaluate.statistics import clopper_pearson
from robustgate.io import atomic_write_json, file_name, say
from robustgate.models.modes import predict_logits
from robustgate.registry import SELECTOR_KINDS
from robustgate.runner import PerSampleTask, shared
from robustgate.threat import ThreatModel

Data = tuple[torch.Tensor, torch.Tensor]


def uncertified(core: Records, samples: int, eps: float) -> Records:
    """A core without a certificate, on the first ``samples`` points: its answers, robust
    nowhere."""
    return Records(core.labels[:samples], core.predictions[:samples],
                   {eps: np.zeros(samples, bool)})


def certified_core_part(core: dict[str, BoundCertificates] | None, core_records: Records,
                        samples: int, eps: float) -> Records:
    """The core's records in a certified count: robust where any of its bound methods certifies
    it, nowhere without a certificate."""
    if core is None:
        return uncertified(core_records, samples, eps)
    return Records(core["ibp"].labels, core["ibp"].predictions,
                   {eps: np.logical_or.reduce([c.records().robust_at(eps)
                                               for c in core.values()])})


@dataclass
class CompositionRun:
    """An experiment's evidence once its models are trained and evaluated: ``records`` (the
    attacked models' test records), ``certificates`` (the smoothed models') and
    ``bound_certificates`` (by method, of the models with bound settings), on the test points
    ``test``; ``validation`` is the validation split (thresholds, gates, mixing weights,
    operating points). Under torchrun it runs on rank 0 and hands its per-sample computations
    (records on the calibration points, the adaptive attack) to every rank of ``crew``."""

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
    certificates: dict[str, Certificates] = field(default_factory=dict)
    bound_certificates: dict[str, dict[str, BoundCertificates]] = field(default_factory=dict)
    crew: Crew = field(default_factory=lambda: Crew(ALONE))

    def shared(self, compute: Callable[..., Result], *arguments: Any, **options: Any) -> Result:
        """``compute(*arguments, **options)``, a per-sample computation taking ``rank``,
        ``world_size`` and ``progress`` (``evaluate_or_resume``, ``certify_or_resume``,
        ``bound_certificates_or_resume``), on every rank of the crew, each its shard (in one
        process, the whole); its result."""
        return shared(self.crew, compute, *arguments, **{"progress": self.progress, **options})

    def evaluate(self, path: Path, model: nn.Module | ComposedClassifier, x: torch.Tensor,
                 y: torch.Tensor, radii: Sequence[float], attack: Any, description: str
                 ) -> Records:
        """``evaluate_or_resume`` into ``path`` at ``radii`` (:meth:`shared`)."""
        return self.shared(evaluate_or_resume, path, model, x, y, self.threat, radii, attack,
                           batch_size=self.config.evaluation.batch_size,
                           description=description)

    def say(self, message: str) -> None:
        say(message, self.progress)

    @property
    def eps(self) -> float:
        return self.threat.eps

    @property
    def certified_test(self) -> Data:
        """The test points the certificates cover."""
        limit = self.config.evaluation.certify_limit
        return self.test[0][:limit], self.test[1][:limit]

    def bound_methods(self, name: str) -> list[str]:
        """The bound methods a model is certified by: its settings' and its selectors'."""
        settings = self.config.models[name].bounds
        assert settings is not None
        deployed = set().union(*(SELECTOR_KINDS[c.selector].bound_methods(c)
                                 for c in self.config.compositions if name in c.branches))
        return ["ibp", *sorted((set(settings.methods) | deployed) - {"ibp"})]

    def bound_radii(self, name: str, split: str = "test") -> list[float]:
        """Where a model is certified: on the test points eps, the summary radii, and the radii
        each selector of it may be counted at; on the validation points (``split``), eps and
        the radii of the selectors whose ``κ`` is chosen there."""
        evaluation = self.config.evaluation
        radii = {self.eps, *(evaluation.certified_radii if split == "test" else [])}
        for composition in self.config.compositions:
            if name in composition.branches:
                radii |= SELECTOR_KINDS[composition.selector].bound_radii(composition,
                                                                         self.eps, split)
        return sorted(radii)

    # -- calibration data --------------------------------------------------------------------

    def calibration(self) -> Data:
        if self.validation is None:
            raise ValueError("calibrated selectors need validation data: set "
                             "data.validation_size")
        limit = self.config.calibration.limit
        return self.validation[0][:limit], self.validation[1][:limit]

    def gate_count(self) -> int:
        """The calibration points that train gates; the rest set thresholds."""
        return int(self.config.calibration.gate.share * len(self.calibration()[1]))

    def calibration_part(self) -> slice:
        return slice(self.gate_count(), None)

    def validation_records(self, name: str) -> Records:
        """A model's records on the calibration data (resumable): at eps, and at every radius
        its selectors' operating points are chosen at there."""
        radii = {self.eps}.union(*(
            SELECTOR_KINDS[c.selector].attack_radii(c, self.eps, "validation")
            for c in self.config.compositions if name in c.branches))
        radii = sorted(round(radius, 12) for radius in radii)
        path = self.out / "records" / "validation" / f"{name}.csv"
        x, y = self.calibration()
        if not path.exists():
            self.say(f"[{name}] robustness at {', '.join(f'{r:g}' for r in radii)} on {len(y)} "
                     "validation points")
        return self.evaluate(path, self.models[name], x, y, radii, self.attack,
                             f"{name}/validation")

    def accurate(self, name: str, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        """Where model ``name`` answers ``(x, y)`` rightly."""
        return (predict_logits(self.models[name], x).argmax(1) == y).numpy()

    def matching_accuracy(self, branch: str, core: str) -> float:
        """The robustness selector's composed natural accuracy on the calibration part: the
        target other selectors are calibrated to."""
        x, y = self.calibration()
        records = self.validation_records(branch)
        selected = records.robust_at(self.eps)
        composed = np.where(selected, records.accurate, self.accurate(core, x, y))
        return float(composed[self.calibration_part()].mean())

    # -- counting ------------------------------------------------------------------------------

    def count(self, composition: CompositionSettings, selections: Sequence[Selection],
              selectors: Sequence[Any], scores: np.ndarray | None = None
              ) -> CompositionResult:
        """An attacked composition counted in the sound form on the test points from its
        branches' ``selections``; writes its routes and records, and attacks the composition
        deployed with ``selectors`` end to end (``adaptive``)."""
        parts = [self.records[name] for name in composition.branches]
        counted, composed_records, routes = composition_metrics(
            parts, self.records[composition.core], selections)
        name = file_name(composition.label)
        Routes(routes, scores).to_csv(self.out / "selection" / f"{name}.csv")
        composed_records.to_csv(self.out / "records" / "composed" / f"{name}.csv")
        composed = ComposedClassifier.chain(
            [(self.models[branch], selector)
             for branch, selector in zip(composition.branches, selectors, strict=True)],
            self.models[composition.core])
        return CompositionResult(**counted, adaptive=self.adaptive(composition.label, composed,
                                                                   composed_records))

    def certified_count(self, composition: CompositionSettings, branch: Records, core: Records,
                        selection: Selection, kappa: float) -> CertifiedCompositionResult:
        """A certified composition's records (written beside the run) and metrics: composed
        natural and certified accuracy (with its 95% interval), certified robust inaccuracy,
        selection and stability rates, and the selection taken on the clean input beside
        them."""
        eps = selection.eps
        composed = compose_records(branch, core, selection)
        composed.to_csv(self.out / "records" / "certified"
                        / f"{file_name(composition.label)}.csv")
        certified = composed.accurate & composed.robust_at(eps)
        low, high = clopper_pearson(int(certified.sum()), len(certified))
        unattacked = selection.selected & branch.accurate & branch.robust_at(eps)
        return CertifiedCompositionResult(
            natural_accuracy=float(composed.accurate.mean()),
            core_natural_accuracy=float(core.accurate.mean()),
            certified_accuracy=float(certified.mean()),
            certified_accuracy_interval=[low, high],
            certified_robust_inaccuracy=float((~composed.accurate
                                               & composed.robust_at(eps)).mean()),
            certified_accuracy_if_selector_not_attacked=float(unattacked.mean()),
            **selection_metrics(branch.accurate, selection.selected),
            stable_rate=float(selection.stable.mean()), kappa=kappa, samples=len(certified))

    # -- attacks on the whole system -----------------------------------------------------------

    def attacked(self, label: str, model: Any, attack: Any, kept: Path | None = None
                 ) -> tuple[Records | None, dict[str, int]]:
        """Records of ``model`` (a composition, or a model attacked whole) under ``attack`` on
        the first ``adaptive.limit`` test points (resumable; each rank of the crew its shard),
        and how many inputs each candidate of an adaptive ``attack`` broke first
        (:meth:`tallied`, ``kept`` there)."""
        limit = min(self.config.adaptive.limit, len(self.test[1]))
        if limit == 0:
            return None, {}
        path = self.out / "records" / "adaptive" / f"{file_name(label)}.csv"
        if not path.exists():
            self.say(f"[{label}] attacking the whole system on {limit} test points")
        return self.tallied(path, model, self.test[0][:limit], self.test[1][:limit],
                            [self.eps], attack, f"{label}/adaptive", "candidate_counts", kept)

    def tallied(self, path: Path, model: Any, x: torch.Tensor, y: torch.Tensor,
                radii: Sequence[float], attack: Any, description: str, tally: str,
                kept: Path | None = None) -> tuple[Records, dict[str, int]]:
        """:meth:`evaluate`, and the counts ``attack`` keeps in its attribute ``tally`` (an
        adaptive attack's ``candidate_counts``, a cascade's ``decided``) summed over the ranks'
        shards, of the inputs this call computed; with ``kept``, written there by the first
        call and read back from there by every later one."""
        shares = self.crew.share(_TalliedShard(evaluate_or_resume, (path, model, x, y,
                                                                    self.threat, radii), {
            "attack": attack, "batch_size": self.config.evaluation.batch_size,
            "progress": self.progress, "description": description}, tally))
        counts: dict[str, int] = {}
        for _, shard_counts in shares:
            for name, count in shard_counts.items():
                counts[name] = counts.get(name, 0) + count
        if kept is None:
            return shares[0][0], counts
        if not kept.exists():
            atomic_write_json(kept, counts)
        return shares[0][0], json.loads(kept.read_text())

    def adaptive(self, label: str, composed: ComposedClassifier, counted: Records
                 ) -> AdaptiveComparison | None:
        """The composition under the adaptive attack against its count."""
        attack = AdaptiveAttack(**self.config.adaptive.attack_options(), seed=self.config.seed)
        attacked, candidates = self.attacked(
            label, composed, attack,
            self.out / "records" / "adaptive" / f"{file_name(label)}.candidates.json")
        if attacked is None:
            return None
        return AdaptiveComparison(
            **compare_with_attack(attacked, counted, self.eps), attack=repr(attack),
            # which candidate broke each input first (of the attacks that wrote the records)
            candidates=candidates, sanity=self._sanity(label, composed, attack))

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
            self.say(f"[{label}] sanity checks on {limit} test points")
            atomic_write_json(path, sanity_checks(
                composed, self.test[0][:limit], self.test[1][:limit], self.threat, attack,
                settings.square_queries, seed=self.config.seed,
                batch_size=self.config.evaluation.batch_size))
        return json.loads(path.read_text())


@dataclass
class _TalliedShard(PerSampleTask):
    """A rank's share of an evaluation: the records (rank 0), and the counts the attack keeps in
    its attribute ``tally`` over this rank's shard (none where it keeps none)."""

    tally: str = "candidate_counts"

    def __call__(self, process: Process) -> tuple[Records | None, dict[str, int]]:
        records = super().__call__(process)
        return records, dict(getattr(self.options["attack"], self.tally, {}))
