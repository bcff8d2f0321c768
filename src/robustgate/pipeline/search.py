"""Operating points over training (an experiment's ``searches:``, ``config.SearchSettings``): the
branch's recipe and the selector's ``κ`` chosen together for the composition with the core, as
the paper chose its headline run (the most robust composition among those as accurate as the
core, over recipes).

Every candidate recipe fine-tunes (or trains) a branch; each is counted with the core at every
``κ`` on the choosing and the confirming part of the validation split, and chosen by
``evaluate.operating_points.choose_recipe``. Test figures are computed beside, for the report,
after the choice: nothing of the test split enters it.

Files in the run directory, under ``searches/<search>/``: ``candidates.json`` (each candidate's
grid values), ``candidates/<i>/model/`` (its training run, resumable), per split (``choose``,
``confirm``, ``test``) ``candidates/<i>/records/<split>.csv`` (robustness selector: the branch's
robustness at every radius of the sweep) or ``candidates/<i>/certificates/<split>.<method>.csv``
(bound selector), the core's beside in ``core/``, and ``result.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustgate.config import ExperimentConfig, SearchSettings, TrainSpec
from robustgate.distributed import Process
from robustgate.evaluate import (
    Records,
    compose_records,
    robustness_metrics,
)
from robustgate.evaluate.certified import bound_certificates_or_resume, certify_or_resume
from robustgate.evaluate.operating_points import (
    SelectionAt,
    choose_operating_point,
    choose_recipe,
    operating_curve,
    point_at,
    validation_parts,
)
from robustgate.evaluate.results import (
    CurvePoint,
    PairedComparison,
    RecipeChoice,
    SearchCandidate,
    SearchResult,
    SearchTest,
)
from robustgate.evaluate.statistics import mcnemar_p_value
from robustgate.io import atomic_write_json, file_name, say
from robustgate.models import load_checkpoint
from robustgate.models.modes import predict_logits
from robustgate.registry import SELECTOR_KINDS
from robustgate.selector_kinds.run import CompositionRun, certified_core_part
from robustgate.train.run import train_model

Data = tuple[torch.Tensor, torch.Tensor]
SPLITS = ("choose", "confirm", "test")


@dataclass
class SearchRunner:
    """Runs the searches of ``evidence.config`` once its models are trained and evaluated
    (``evidence``: the experiment's, the cores' test records and certificates among it);
    ``checkpoints`` are the experiment's, by name (a candidate's ``@name``). Under torchrun
    every rank of the evidence's crew trains each candidate together, as the experiment's
    models were trained."""

    evidence: CompositionRun
    train: Data
    num_classes: int
    metadata: dict[str, Any]
    checkpoints: dict[str, Path]

    @property
    def config(self) -> ExperimentConfig:
        return self.evidence.config

    @property
    def progress(self) -> bool:
        return self.evidence.progress

    def run(self, search: SearchSettings) -> SearchResult:
        """Train the candidates (every one of the grid, or ``search.trials`` of them chosen by
        Optuna), count each with the core on every split, choose; the result is also written to
        ``searches/<search>/result.json``."""
        base = self.evidence.out / "searches" / search.name
        test = self._test_points(search)
        choose, confirm = validation_parts(search, self.evidence.validation, self.config.seed)
        data = {"choose": choose, "confirm": confirm, "test": test}
        candidates = search.candidates()
        atomic_write_json(base / "candidates.json", [overrides for overrides, _ in candidates])
        eps = self.evidence.eps
        kind = SELECTOR_KINDS[search.selector]
        cores = {split: self._core(search, base / "core", split, *data[split])
                 for split in SPLITS}
        core_accuracy = float(cores["choose"].accurate.mean())
        curves: dict[str, dict[str, list[CurvePoint]]] = {split: {} for split in SPLITS}
        alone: dict[str, dict[str, Any]] = {split: {} for split in SPLITS}
        described: dict[int, SearchCandidate] = {}
        tested: dict[str, tuple[Records, SelectionAt]] = {}

        def count(index: int) -> float:
            """Train candidate ``index`` (or read it back) and count it on every split; returns
            the objective of a sampled search: its sound robust accuracy on the choosing points
            where it meets the target there, else its natural accuracy less one."""
            name = str(index)
            overrides, spec = candidates[index]
            if name not in tested:
                directory = base / "candidates" / name
                say(f"[{search.name}] candidate {index} ({len(described) + 1} tried of "
                    f"{len(candidates)}): {overrides}", self.progress)
                checkpoint = self.evidence.crew.share(_TrainCandidate(
                    spec, self.train, choose, self.num_classes, directory / "model",
                    self.config.seed, self.evidence.device, self.progress, self.metadata,
                    self.checkpoints))[0]
                model, _ = load_checkpoint(checkpoint, self.evidence.device, trust_code=True)
                summary = json.loads((directory / "model" / "summary.json").read_text())
                described[index] = SearchCandidate(name, overrides, summary["best_epoch"])
                for split in SPLITS:
                    branch, selection_at = kind.search_branch(self.evidence, search, model, spec,
                                                              directory, split, *data[split])
                    curves[split][name] = operating_curve(branch, cores[split], eps,
                                                          search.kappas, selection_at)
                    alone[split][name] = robustness_metrics(branch.accurate,
                                                            branch.robust_at(eps))
                tested[name] = (branch, selection_at)
            point = choose_operating_point(curves["choose"][name], core_accuracy,
                                           search.max_accuracy_drop)
            return (point.robust_accuracy if point.meets_target
                    else point.natural_accuracy - 1)

        if search.trials is None:
            for index in range(len(candidates)):
                count(index)
        else:
            _sample_candidates(search, base / "study.db", self.config.seed, count,
                               self.progress)
        choice = choose_recipe(curves["choose"], curves["confirm"], core_accuracy,
                               search.max_accuracy_drop, search.confidence)
        result = SearchResult(
            search.selector, len(candidates), [described[index] for index in sorted(described)],
            choice, curves, alone,
            {split: robustness_metrics(core.accurate, core.robust_at(eps))
             for split, core in cores.items()},
            self._test_figures(search, choice, curves["test"], cores["test"], tested))
        atomic_write_json(base / "result.json", result.to_json())
        picked = choice.chosen
        say(f"[{search.name}] " + (
            f"chose candidate {picked} at kappa {choice.candidates[picked].kappa:g}"
            if picked is not None else
            f"no candidate confirmed; closest: {choice.closest}"), self.progress)
        return result

    # -- the points and the core ---------------------------------------------------------------

    def _test_points(self, search: SearchSettings) -> Data:
        """The test points the selector is counted on: the certified ones for a certified
        kind, all of them otherwise."""
        return self.evidence.certified_test if SELECTOR_KINDS[search.selector].certified \
            else self.evidence.test

    def _core(self, search: SearchSettings, directory: Path, split: str, x: torch.Tensor,
              y: torch.Tensor) -> Records:
        """The core's part of the count on one split: its records at eps (a kind counted from
        attack records); for a certified kind its certificates where it has bound (or
        smoothing) settings, else its answers alone, robust nowhere."""
        run = self.evidence
        name, eps = search.core, run.eps
        if not SELECTOR_KINDS[search.selector].certified:
            if split == "test":
                return run.records[name]
            return run.evaluate(directory / "records" / f"{split}.csv", run.models[name], x, y,
                                [eps], run.attack, f"{search.name}/core/{split}")
        smoothing = self.config.models[name].smoothing
        if smoothing is not None:
            certificates = run.certificates[name] if split == "test" else run.shared(
                certify_or_resume, directory / "certificates" / f"{split}.csv",
                run.models[name], smoothing, x, y, description=f"{search.name}/core/{split}")
            return certificates.records(run.threat, [eps], x[0].numel())
        settings = self.config.models[name].bounds
        if split == "test":
            bounds = run.bound_certificates.get(name)
        elif settings is None:
            bounds = None
        else:
            bounds = run.shared(bound_certificates_or_resume, directory / "certificates", split,
                                run.models[name], settings, run.bound_methods(name), x, y,
                                run.threat, [eps])
        predictions = predict_logits(run.models[name], x).argmax(1).cpu().numpy()
        answers = Records(y.numpy(), predictions, {})
        return certified_core_part(bounds, answers, len(y), eps)

    # -- test figures, after the choice ----------------------------------------------------------

    def _test_figures(self, search: SearchSettings, choice: RecipeChoice,
                      curves: dict[str, list[CurvePoint]], core: Records,
                      tested: dict[str, tuple[Records, SelectionAt]]) -> SearchTest:
        """The chosen (or closest) pair on the test points: its figures, the two-sided exact
        McNemar test of its natural accuracy against the core's, and of its sound robust
        accuracy against every composition of the experiment with the same core and selector
        (on the test points both were counted on)."""
        eps = self.evidence.eps
        name = choice.picked
        kappa = choice.candidates[name].kappa
        point = point_at(curves[name], kappa)
        branch, selection_at = tested[name]
        composed = compose_records(branch, core, selection_at(branch, eps, kappa))
        kind = "certified" if SELECTOR_KINDS[search.selector].certified else "composed"
        against = {}
        for composition in self.config.compositions:
            path = self.evidence.out / "records" / kind / f"{file_name(composition.label)}.csv"
            if (composition.core == search.core and composition.selector == search.selector
                    and path.exists()):
                against[composition.label] = paired_robust_comparison(
                    composed, Records.read_csv(path), eps)
        return SearchTest(
            **point.figures(), candidate=name, chosen=choice.chosen is not None,
            core_natural_accuracy=float(core.accurate.mean()),
            core_robust_accuracy=float((core.accurate & core.robust_at(eps)).mean()),
            accuracy_p_value=mcnemar_p_value(point.gained, point.lost),
            accuracy_test="exact McNemar, two-sided, on the inputs only one of them answers "
                          "rightly",
            against=against)


@dataclass
class _TrainCandidate:
    """A crew's task: a candidate's training run on every rank, each on its own device (as a
    crew sends devices) and its own copy of the run's training split (which travels by name);
    the best checkpoint's path."""

    spec: TrainSpec
    train: Data
    validation: Data
    num_classes: int
    out: Path
    seed: int
    device: torch.device
    progress: bool
    metadata: dict[str, Any]
    checkpoints: dict[str, Path]

    def __call__(self, process: Process) -> Path:
        return train_model(
            self.spec, self.train, self.validation, self.num_classes, self.out, seed=self.seed,
            device=self.device, progress=self.progress and process.is_main,
            metadata=self.metadata, resolve=lambda reference: self.checkpoints[reference[1:]],
            process=process)


def paired_robust_comparison(first: Records, second: Records, eps: float) -> PairedComparison:
    """Two compositions' sound robust accuracy on the same test points (the first ``n`` of both),
    compared by the two-sided exact McNemar test."""
    samples = min(len(first), len(second))
    if not np.array_equal(first.labels[:samples], second.labels[:samples]):
        raise ValueError("the compositions were counted on different test points")
    held = [(r.accurate & r.robust_at(eps))[:samples] for r in (first, second)]
    only_first, only_second = int((held[0] & ~held[1]).sum()), int((held[1] & ~held[0]).sum())
    return PairedComparison(samples, float(held[0].mean()), float(held[1].mean()), only_first,
                            only_second, mcnemar_p_value(only_first, only_second),
                            "exact McNemar, two-sided")


def _sample_candidates(search: SearchSettings, storage: Path, seed: int,
                       count: Callable[[int], float], progress: bool) -> None:
    """``search.trials`` candidates of the grid sampled by Optuna's TPE sampler (seeded), each
    grid key a categorical choice, maximizing ``count``. The study is kept in ``storage``
    (SQLite): an interrupted search resumes with the trials it finished, and a candidate
    suggested again is read back, not retrained."""
    try:
        import optuna
    except ImportError:
        raise ValueError(f"search {search.name!r} samples {search.trials} trials with Optuna, "
                         "which is not installed: pip install 'robustgate[search]' (or "
                         "optuna), or leave trials out for the whole grid") from None
    if not progress:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage.parent.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        study_name=search.name, storage=f"sqlite:///{storage}", direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed), load_if_exists=True)
    sizes = [len(values) for values in search.grid.values()]
    finished = [trial for trial in study.trials
                if trial.state == optuna.trial.TrialState.COMPLETE]
    for trial in finished:  # the candidates counted before an interruption, read back
        count(trial.user_attrs["candidate"])

    def objective(trial: Any) -> float:
        index = 0
        for key, size in zip(search.grid, sizes, strict=True):
            index = index * size + trial.suggest_categorical(key, list(range(size)))
        trial.set_user_attr("candidate", index)
        return count(index)

    study.optimize(objective, n_trials=max(0, search.trials - len(finished)))
