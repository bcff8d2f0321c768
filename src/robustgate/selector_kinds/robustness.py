"""The robustness selector (``selector: robustness``): the branch answers where it is robust on
``B(x', κ·eps)`` around the input ``x'`` it sees, checked by the evaluation attack.

Counted from the branch's attack records (``Selection.robustness``): selected at ``κ·eps``, stable
at ``(κ+1)·eps``, unreachable where not robust at ``(κ−1)·eps``. Its knob ``κ`` is configured, or
chosen on validation data for an operating point (``evaluate.operating_points``). It composes
chains, and is the composition the calibrated selectors match.

Its cascade form (``cascade: true``) deploys the same check through ``select.Cascade``: the
bound stages of the branch that pay on the validation data (``select.choose_stages``), then the
attack on what they leave. A certified input is one the attack cannot break, so the cascade
selects like the attack alone but where the attack errs; the evaluation deploys it on the test
points, counts its selection, and reports the inputs each stage decided and the decisions that
differ from the attack records'. Its stability and the core's route are read from the attack
records at ``(κ+1)·eps`` and ``eps`` as for the plain form: a stable selection needs the branch
robust on the larger ball, which no cascade decision at ``κ·eps`` changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robustgate.attacks import Attack
from robustgate.config import CompositionSettings, SearchSettings, TrainSpec
from robustgate.evaluate import Records, Selection
from robustgate.evaluate.operating_points import SelectionAt, choose_kappa, operating_curve
from robustgate.evaluate.results import CompositionResult, OperatingPoint
from robustgate.io import file_name
from robustgate.select import (
    Cascade,
    RobustnessSelector,
    Selector,
    choose_stages,
    describe_route,
)
from robustgate.selector_kinds.base import SelectorKind
from robustgate.selector_kinds.run import CompositionRun
from robustgate.threat import ThreatModel


def robustness_radii(eps: float, kappa: float) -> set[float]:
    """What :meth:`Selection.robustness` reads at ``κ·eps``: the selection ``κ·eps`` and its
    stability ``(κ+1)·eps``, both needed, and at ``κ > 1`` the unreachable inputs' ``(κ−1)·eps``,
    counted where the records hold it."""
    if not kappa >= 1:
        raise ValueError(f"every kappa must be >= 1, got {kappa}")
    radii = {kappa * eps, (kappa + 1) * eps}
    if kappa > 1:
        radii.add((kappa - 1) * eps)
    return radii


def sweep_radii(eps: float, kappas: Sequence[float]) -> list[float]:
    """The radii at which a branch's robustness is needed to count the robustness selector at
    every ``κ`` of ``kappas``, and eps."""
    radii = {eps}.union(*(robustness_radii(eps, kappa) for kappa in kappas))
    return sorted(round(radius, 12) for radius in radii)


CASCADE_MEASURED = 256
"""The calibration points on which a cascade's stages are chosen (``select.choose_stages``)."""


class RobustnessKind(SelectorKind):
    name = "robustness"
    marker = "o"
    takes_kappa = True
    chooses_operating_point = True
    chains = True
    calibration_reference = True
    exact_on_grid = True
    options = ("cascade",)

    def label(self, composition: CompositionSettings) -> str | None:
        return "cascade" if composition.cascade else None

    def selection_radii(self, eps: float, kappa: float) -> set[float]:
        return robustness_radii(eps, kappa)

    def attack_radii(self, composition: CompositionSettings, eps: float, split: str
                     ) -> set[float]:
        if split != "test" and composition.operating_point is None:
            return set()
        return set(sweep_radii(eps, composition.kappas))

    def attacked_selections(self, branches: list[Records], eps: float, kappa: float
                            ) -> list[Selection]:
        return [Selection.robustness(branch, eps, kappa) for branch in branches]

    def _operating_point(self, run: CompositionRun, composition: CompositionSettings
                         ) -> OperatingPoint | None:
        """``κ`` chosen on the calibration data for the operating point (``None``: configured)."""
        settings = composition.operating_point
        if settings is None:
            return None
        point = choose_kappa(run.validation_records(composition.branches[0]),
                             run.validation_records(composition.core), run.eps,
                             settings.kappas, settings.max_accuracy_drop)
        run.say(f"[{composition.label}] kappa {point.kappa:g} chosen on the validation points"
                + ("" if point.chosen.meets_target else " (no kappa meets the target)"))
        return point

    def evaluate(self, run: CompositionRun, composition: CompositionSettings
                 ) -> CompositionResult:
        point = self._operating_point(run, composition)
        kappa = composition.kappa if point is None else point.kappa
        parts = [run.records[name] for name in composition.branches]
        selections = self.attacked_selections(parts, run.eps, kappa)
        checks: list[Attack] = [run.attack] * len(parts)
        cascades = ([self._cascade(run, composition, name, kappa)
                     for name in composition.branches] if composition.cascade else [])
        if cascades:
            checks = [cascade for cascade, _, _ in cascades]
            selections = [replace(selection, selected=selected)
                          for selection, (_, selected, _) in zip(selections, cascades,
                                                                 strict=True)]
        selectors = [RobustnessSelector(run.models[name], run.threat, check, kappa,
                                        run.config.evaluation.batch_size)
                     for name, check in zip(composition.branches, checks, strict=True)]
        result = run.count(composition, selections, selectors)
        result.kappa = kappa
        if cascades:
            result.extras["cascade"] = {name: details for name, (_, _, details)
                                        in zip(composition.branches, cascades, strict=True)}
        if point is not None:
            point.test_curve = operating_curve(parts[0], run.records[composition.core], run.eps,
                                               composition.kappas)
            result.operating_point = point
        return result

    def _cascade(self, run: CompositionRun, composition: CompositionSettings, name: str,
                 kappa: float) -> tuple[Cascade, np.ndarray, dict[str, Any]]:
        """The cascade of branch ``name`` at ``κ·eps``, its stages chosen on (at most
        ``CASCADE_MEASURED`` of) the calibration points; its selection on the test points, and
        what it measured, the inputs each stage decided there and the decisions that differ
        from the attack records'."""
        model, selector_threat = run.models[name], run.threat.scaled(kappa)
        choice = choose_stages(model, run.calibration()[0][:CASCADE_MEASURED], selector_threat,
                               run.attack, run.config.evaluation.batch_size)
        # the cascade's decisions on the test points: robust where it selects (each rank of the
        # crew its shard, with the stages chosen here), its stage counts kept beside
        path = run.out / "records" / "cascade" / f"{file_name(composition.label)}.{name}.csv"
        cascaded, decided = run.tallied(path, model, *run.test, [kappa * run.eps],
                                        Cascade(run.attack, choice.stages),
                                        f"{composition.label}/{name}/cascade", "decided",
                                        path.with_suffix(".decided.json"))
        selected = cascaded.robust_at(kappa * run.eps)
        differing = np.flatnonzero(selected != run.records[name].robust_at(kappa * run.eps))
        run.say(f"[{composition.label}] {name}: cascade {describe_route(choice.stages)}"
                f", inputs decided per stage {decided}, {len(differing)} "
                "decisions differ from the attack's")
        return Cascade(run.attack, choice.stages), selected, {
            "choice": choice.as_dict(), "decided": decided,
            "selected": int(selected.sum()), "differing_decisions": len(differing),
            "differing_indices": differing.tolist()}

    def deploy(self, branch: torch.nn.Module, threat: ThreatModel, attack: Attack,
               threshold: float | None, coverage: float | None,
               calibration: torch.Tensor | None, kappa: float, form: str | None = None,
               ) -> Selector:
        if threshold is not None or coverage is not None:
            raise ValueError("the robustness selector takes no threshold or coverage")
        if form not in (None, "cascade"):
            raise ValueError(f"the robustness selector's forms are {self.options}, not {form!r}")
        if form == "cascade":
            if calibration is None or len(calibration) == 0:
                raise ValueError("the cascade chooses its stages on the validation split: give "
                                 "--validation-size")
            choice = choose_stages(branch, calibration[:CASCADE_MEASURED], threat.scaled(kappa),
                                   attack)
            attack = Cascade(attack, choice.stages)
        return RobustnessSelector(branch, threat, attack, kappa)

    def search_branch(self, run: CompositionRun, search: SearchSettings, model: nn.Module,
                      spec: TrainSpec, directory: Path, split: str, x: torch.Tensor,
                      y: torch.Tensor) -> tuple[Records, SelectionAt]:
        records = run.evaluate(directory / "records" / f"{split}.csv", model, x, y,
                               sweep_radii(run.eps, search.kappas), run.attack,
                               f"{search.name}/{directory.name}/{split}")
        return records, Selection.robustness


ROBUSTNESS = RobustnessKind()
