"""``robustgate run CONFIG.yaml`` (and ``robustgate demo``, the config shipped with the
package): train several models on one data set, evaluate them with one check on the test split
(the evaluation attack raised to the records' check, ``attacks.records_check``; on the training
split too where ``evaluation.splits`` asks), cross-check the records against full AutoAttack,
compose them, and report; the results are objects (``evaluate.results``).

The run directory holds ``config.json``, ``records_check.json`` (the check that writes its
records: a resume under another is refused), ``models/<name>/`` (training runs, resumable),
``records/<split>/<name>.csv`` (per-sample records, resumable), ``autoattack/<name>.csv`` (the
AutoAttack cross-check, ``evaluate.cross_check``), the smoothed models' and the bounded models'
certificates (``certificates/test/``), the compositions' files (each written by its selector
kind: ``selector_kinds.run``), on two-dimensional data ``decision_regions.png`` (panels from
``evaluate.regions``, drawn by ``report.decision_regions``), ``metrics.json`` (the results'
serialization), and ``report.md`` and ``report.html`` (``report.run_report``).
"""

from __future__ import annotations

import json
import time
from collections import ChainMap
from collections.abc import Sequence
from pathlib import Path

import torch

from robustgate.attacks import build_attack, check_attack_applies, records_check
from robustgate.config import CompositionSettings, ExperimentConfig, TrainSpec
from robustgate.data import load_dataset
from robustgate.device import resolve_device
from robustgate.distributed import ALONE, Crew, Process, barrier
from robustgate.evaluate import Grid, Records, evaluate_or_resume
from robustgate.evaluate.certified import bound_certificates_or_resume, certify_or_resume
from robustgate.evaluate.cross_check import autoattack_check
from robustgate.evaluate.operating_points import validation_parts
from robustgate.evaluate.regions import region_panels
from robustgate.evaluate.results import (
    BoundResult,
    ExperimentResults,
    ModelResult,
    SmoothedModelResult,
    SplitResults,
    counted_split,
)
from robustgate.io import atomic_write_json, say
from robustgate.losses import make_loss
from robustgate.models import load_checkpoint
from robustgate.pipeline.search import SearchRunner
from robustgate.registry import SELECTOR_KINDS
from robustgate.report.decision_regions import FILE as REGIONS_FILE
from robustgate.report.decision_regions import RESOLUTION, plot_decision_regions
from robustgate.report.run_report import write_reports
from robustgate.run_directory import check_records_check, check_run_directory
from robustgate.selector_kinds import CompositionRun
from robustgate.train.augmentation import make_augmentation
from robustgate.train.run import train_model, training_attack_of, training_data


def _check_model_references(config: ExperimentConfig) -> None:
    seen: set[str] = set()
    for name, spec in config.models.items():
        init = spec.model.init
        if init is not None and init.startswith("@") and init[1:] not in seen:
            raise ValueError(f"model {name!r} starts from {init!r}, which is not a model "
                             f"trained before it; models so far: {sorted(seen)}")
        seen.add(name)
    for composition in config.compositions:
        for role, name in [*(("branch", b) for b in composition.branches),
                           ("core", composition.core)]:
            if name not in config.models:
                raise ValueError(f"composition {role} {name!r} is not a model of the config; "
                                 f"models: {sorted(config.models)}")
        kind = SELECTOR_KINDS[composition.selector]
        core = config.models[composition.core]
        problems = [kind.refuses(config.models[name]) for name in composition.branches]
        if core.smoothing is not None and not kind.smoothed_branches:
            problems.append(kind.refuses(core))
        problem = next((problem for problem in problems if problem is not None), None)
        if problem is not None:
            raise ValueError(f"composition {composition.label!r}: {problem}")
        if composition.operating_point is not None and not config.data.validation_size:
            raise ValueError(f"composition {composition.label!r}: its operating point is chosen "
                             "on validation data: set data.validation_size")
    for search in config.searches:
        if search.core not in config.models:
            raise ValueError(f"search {search.name!r}: its core {search.core!r} is not a model "
                             f"of the config; models: {sorted(config.models)}")
        init = search.recipe.model.init
        if init is not None and init.startswith("@") and init[1:] not in config.models:
            raise ValueError(f"search {search.name!r} starts from {init!r}, which is not a model "
                             f"of the config; models: {sorted(config.models)}")


# the name the training split travels by between the crew's ranks (no model's name: it holds a
# separator)
TRAINING_SPLIT = "run/training split"


def run_experiment(
    config: ExperimentConfig, out: str | Path, device: str | torch.device = "auto",
    progress: bool = True, process: Process = ALONE,
) -> ExperimentResults | None:
    """Run the experiment into ``out`` (resuming what is there); returns its results (written
    as ``metrics.json``). Under torchrun (``process``) every rank trains the models together
    (``train.run``) and computes its shard of every model's per-sample records and
    certificates (``runner``: the same files as one process); rank 0 then cross-checks, composes
    (the adaptive attack included), runs the searches and reports, handing every per-sample
    computation of that stage (the AutoAttack cross-check, records on the validation points and
    of a search's candidates, the adaptive attack) and every search candidate's training to all
    ranks (``distributed.Crew``), and the other ranks return ``None`` once rank 0 is done."""
    out = Path(out)
    device = resolve_device(device)
    _check_model_references(config)
    settings, seed = config.evaluation, config.seed
    threat = settings.threat.build()
    eps = threat.eps
    radii = _attack_radii(config.compositions, config.models, eps)
    # the data and every loss first: a bad data set or loss parameter is refused before
    # anything is written
    started = time.perf_counter()
    train, validation, num_classes, metadata = training_data(config.data, seed)
    test = load_dataset(split="test", seed=seed,
                        **config.data.model_dump(exclude={"limit_train"}))
    if settings.exact_grid is not None and tuple(test.input_shape) != (2,):
        raise ValueError(f"evaluation.exact_grid is for two-dimensional data; "
                         f"{config.data.name!r} has inputs of shape {tuple(test.input_shape)}")
    specs = [(f"model {name!r}", spec) for name, spec in config.models.items()]
    for search in config.searches:
        validation_parts(search, validation, seed)
        specs += [(f"search {search.name!r}, candidate {overrides}", spec)
                  for overrides, spec in search.candidates()]
    for what, spec in specs:
        try:
            attack_options = training_attack_of(spec)
            if spec.augmentation is not None:
                make_augmentation(spec.augmentation, train[0].shape[1:])
            make_loss(spec.loss.name, spec.loss.threat.build(), **attack_options,
                      **spec.loss.params)
        except ValueError as error:
            raise ValueError(f"{what}: {error}") from None
    try:
        # the attack as configured must apply, also where the records' check raises it
        check_attack_applies(build_attack(settings.attack, seed), num_classes)
        attack = records_check(settings.attack, settings.records_check, num_classes, seed)
        check_attack_applies(attack, num_classes)
    except ValueError as error:
        raise ValueError(f"evaluation.attack: {error}") from None
    if process.is_main:
        check_run_directory(out, json.loads(config.model_dump_json()), ExperimentConfig)
        check_records_check(out, repr(attack))
    barrier(process)
    checkpoints: dict[str, Path] = {}
    for name, spec in config.models.items():
        say(f"[{name}] training ({spec.loss.name}, {spec.train.epochs} epochs)", progress)
        checkpoints[name] = train_model(
            spec, train, validation, num_classes, out / "models" / name, seed=seed,
            device=device, progress=progress, resolve=lambda ref: checkpoints[ref[1:]],
            metadata=metadata, process=process,
        )
    x_test, y_test = test.x[: settings.limit], test.y[: settings.limit]
    shard = {"rank": process.rank, "world_size": process.world_size}
    progress = progress and process.is_main
    records: dict[str, Records] = {}
    train_records: dict[str, Records] = {}
    models = {}
    # under torchrun rank 0 composes, counts and reports, sharing their per-sample work (and a
    # search's trainings) with the other ranks, which hold the same models and training split
    # (its tasks' files in .crew/)
    crew = Crew(process, device, ChainMap(models, {TRAINING_SPLIT: train}), out / ".crew")
    run = CompositionRun(config, out, models, records, (x_test, y_test), validation, threat,
                         attack, device, progress, crew=crew)
    results: SplitResults = {}
    x_certified, y_certified = run.certified_test
    dimension = x_test[0].numel()
    for name, path in checkpoints.items():
        # the run's own checkpoints, of the architectures its config names
        models[name], checkpoint_metadata = load_checkpoint(path, device, trust_code=True)
        smoothing = config.models[name].smoothing
        if smoothing is not None:
            say(f"[{name}] certifying (smoothing sigma {smoothing.sigma:g}, n {smoothing.n}) on "
                f"{len(y_certified)} test points", progress)
            run.certificates[name] = certify_or_resume(
                out / "certificates" / "test" / f"{name}.csv", models[name], smoothing,
                x_certified, y_certified, progress, name, **shard)
            results[name] = SmoothedModelResult.of(
                run.certificates[name], smoothing, threat, settings.certified_radii, dimension,
                checkpoint_metadata.get("sigma_train"))
            continue
        records[name] = evaluate_or_resume(
            out / "records" / "test" / f"{name}.csv", models[name], x_test, y_test, threat,
            radii[name], attack, batch_size=settings.batch_size, progress=progress,
            description=f"{name} at eps {', '.join(f'{r:g}' for r in radii[name])}", **shard,
        )
        results[name] = ModelResult.of(records[name], eps)
        if "train" in settings.splits:
            train_records[name] = evaluate_or_resume(
                out / "records" / "train" / f"{name}.csv", models[name], *train, threat,
                radii[name], attack, batch_size=settings.batch_size, progress=progress,
                description=f"{name}/train", **shard)
        bounds = config.models[name].bounds
        if bounds is not None:
            bound_radii = run.bound_radii(name)
            run.bound_certificates[name] = bound_certificates_or_resume(
                out / "certificates" / "test", name, models[name], bounds,
                run.bound_methods(name), x_certified, y_certified, threat, bound_radii,
                progress, **shard)
            results[name].bounds = BoundResult.of(run.bound_certificates[name], records[name],
                                                  bound_radii)
    if not process.is_main:
        run.crew.serve()
        return None
    with run.crew:  # the other ranks serve until rank 0 leaves this block
        # the records' check cross-checked before any count leans on them
        check = autoattack_check(
            {name: models[name] for name in records}, records, x_test, y_test, threat,
            settings.attack.name, settings.autoattack_check, seed, settings.batch_size,
            out / "autoattack", progress, run.crew)
        for composition in config.compositions:
            results[composition.label] = SELECTOR_KINDS[composition.selector].evaluate(
                run, composition)
        # the κ each composition deploys, as its kind chose it
        kappas = {c.label: results[c.label].kappa for c in config.compositions
                  if results[c.label].kappa is not None}
        splits: dict[str, SplitResults] = {"test": results}
        data = {"test": (x_test, y_test)}
        split_records = {"test": records}
        if "train" in settings.splits:
            data["train"] = train
            split_records["train"] = train_records
            splits["train"] = counted_split(split_records["train"], config.compositions, kappas,
                                            eps)
        # the one-branch compositions deployed exactly on a grid, with the κ each deploys
        deployed = {c.label: (c, kappas[c.label]) for c in config.compositions
                    if SELECTOR_KINDS[c.selector].exact_on_grid and len(c.branches) == 1}
        if settings.exact_grid is not None:
            say(f"exact robustness of the compositions on a grid of spacing "
                f"{settings.exact_grid:g}", progress)
            exact = Grid(threat, settings.exact_grid).exact_compositions(deployed, models, data)
            for split, by_label in exact.items():
                for label, values in by_label.items():
                    splits[split][label].exact = values
        if tuple(test.input_shape) == (2,) and not (out / REGIONS_FILE).exists():
            shown = "train" if "train" in data else "test"
            say(f"plotting decision regions on the {shown} points", progress)
            panels = region_panels(models, split_records[shown], deployed, threat, attack,
                                   RESOLUTION**2)
            x, y = data[shown]
            plot_decision_regions(panels, x.numpy(), y.numpy(), num_classes, out / REGIONS_FILE,
                                  title=f"{config.data.name}, {shown} points; hatched: the "
                                  "selector abstains (core answers)")
        # the searches of a recipe last: each trains and counts candidates of its own
        searches = {}
        if config.searches:
            runner = SearchRunner(run, train, num_classes, metadata, checkpoints)
            searches = {search.name: runner.run(search) for search in config.searches}
        result = ExperimentResults(
            results, check, settings.attack.name, eps, len(y_test),
            round(time.perf_counter() - started, 1), splits.get("train"), searches)
        atomic_write_json(out / "metrics.json", result.to_json())
        write_reports(out)
        return result


def _attack_radii(compositions: Sequence[CompositionSettings], models: dict[str, TrainSpec],
                  eps: float) -> dict[str, list[float]]:
    """Where each model's robustness is evaluated: eps, and every radius its selectors need to
    be counted at each ``κ`` they may deploy."""
    return {model: sorted(round(radius, 12) for radius in {eps}.union(*(
        SELECTOR_KINDS[c.selector].attack_radii(c, eps, "test")
        for c in compositions if model in c.branches))) for model in models}
