"""``robustgate run CONFIG.yaml`` (and ``robustgate demo``, the config shipped with the
package): train several models on one data set, evaluate them with one attack on the test split
(and the training split where ``evaluation.splits`` asks), compose them, check the attack against
full AutoAttack, and report.

The run directory holds ``config.json``, ``models/<name>/`` (training runs, resumable),
``records/<split>/<name>.csv`` (per-sample records, resumable), ``autoattack/<name>.csv`` (the
AutoAttack check), the smoothed models' and the bounded models' certificates
(``certificates/test/``), the compositions' files (each written by its selector kind:
``selector_kinds.run``), on
two-dimensional data ``decision_regions.png`` (``pipeline.regions``), ``metrics.json``, and
``report.md`` and ``report.html`` (``report.run_report``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustgate.attacks import build_attack, check_attack_applies, make_attack
from robustgate.config import CompositionSettings, ExperimentConfig
from robustgate.data import load_dataset
from robustgate.device import resolve_device
from robustgate.evaluate import (
    Grid,
    Records,
    evaluate_or_resume,
    robustness_metrics,
)
from robustgate.evaluate.certified import bound_certificates_or_resume, certify_or_resume
from robustgate.evaluate.sound_count import composition_metrics
from robustgate.io import atomic_write_json, say
from robustgate.losses import make_loss
from robustgate.models import load_checkpoint
from robustgate.pipeline.certified_models import bound_model_metrics, certified_model_metrics
from robustgate.pipeline.regions import draw_decision_regions, exact_compositions
from robustgate.pipeline.run_directory import check_run_directory
from robustgate.pipeline.search import SearchRunner, validation_parts
from robustgate.registry import SELECTOR_KINDS
from robustgate.report.decision_regions import FILE as REGIONS_FILE
from robustgate.report.run_report import write_reports
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


def run_experiment(
    config: ExperimentConfig, out: str | Path, device: str | torch.device = "auto",
    progress: bool = True,
) -> dict[str, Any]:
    """Run the experiment into ``out`` (resuming what is there); returns the metrics."""
    out = Path(out)
    device = resolve_device(device)
    _check_model_references(config)
    # the data and every loss first: a bad data set or loss parameter is refused before
    # anything is written
    started = time.perf_counter()
    train, validation, num_classes, metadata = training_data(config.data, config.seed)
    test = load_dataset(split="test", seed=config.seed,
                        **config.data.model_dump(exclude={"limit_train"}))
    two_dimensional = tuple(test.input_shape) == (2,)
    if config.evaluation.exact_grid is not None and not two_dimensional:
        raise ValueError(f"evaluation.exact_grid is for two-dimensional data; "
                         f"{config.data.name!r} has inputs of shape {tuple(test.input_shape)}")
    specs = [(f"model {name!r}", spec) for name, spec in config.models.items()]
    for search in config.searches:
        validation_parts(search, validation, config.seed)
        specs += [(f"search {search.name!r}, candidate {overrides}", spec)
                  for overrides, spec in search.candidates()]
    for what, spec in specs:
        try:
            make_loss(spec.loss.name, spec.loss.threat.build(), **training_attack_of(spec),
                      **spec.loss.params)
            if spec.augmentation is not None:
                make_augmentation(spec.augmentation, train[0].shape[1:])
        except ValueError as error:
            raise ValueError(f"{what}: {error}") from None
    try:
        check_attack_applies(build_attack(config.evaluation.attack, config.seed), num_classes)
    except ValueError as error:
        raise ValueError(f"evaluation.attack: {error}") from None
    check_run_directory(out, json.loads(config.model_dump_json()), ExperimentConfig)
    checkpoints: dict[str, Path] = {}
    for name, spec in config.models.items():
        say(f"[{name}] training ({spec.loss.name}, {spec.train.epochs} epochs)", progress)
        checkpoints[name] = train_model(
            spec, train, validation, num_classes, out / "models" / name, seed=config.seed,
            device=device, progress=progress, resolve=lambda ref: checkpoints[ref[1:]],
            metadata=metadata,
        )

    settings = config.evaluation
    threat = settings.threat.build()
    eps = threat.eps
    x_test, y_test = test.x, test.y
    if settings.limit is not None:
        x_test, y_test = x_test[: settings.limit], y_test[: settings.limit]
    attack = build_attack(settings.attack, config.seed)
    records: dict[str, Records] = {}
    radii: dict[str, list[float]] = {}
    models = {}
    run = CompositionRun(config, out, models, records, (x_test, y_test), validation, threat,
                         attack, device, progress)
    metrics: dict[str, Any] = {}
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
                x_certified, y_certified, progress, name)
            metrics[name] = certified_model_metrics(
                run.certificates[name], smoothing, threat, settings.certified_radii, dimension,
                checkpoint_metadata.get("sigma_train"))
            continue
        radii[name] = _radii(config, name, eps)
        say(f"[{name}] evaluating with {settings.attack.name} at eps "
             + " and ".join(f"{r:g}" for r in radii[name]), progress)
        records[name] = evaluate_or_resume(
            out / "records" / "test" / f"{name}.csv", models[name], x_test, y_test, threat,
            radii[name], attack, batch_size=settings.batch_size, progress=progress,
            description=name,
        )
        bounds = config.models[name].bounds
        if bounds is not None:
            run.bound_certificates[name] = bound_certificates_or_resume(
                out / "certificates" / "test", name, models[name], bounds,
                run.bound_methods(name), x_certified, y_certified, threat,
                run.bound_radii(name), progress)

    metrics.update({
        name: robustness_metrics(r.accurate, r.robust_at(eps)) for name, r in records.items()
    })
    for name, by_method in run.bound_certificates.items():
        metrics[name].update(bound_model_metrics(by_method, records[name],
                                                 run.bound_radii(name)))
    for composition in config.compositions:
        metrics[composition.label] = SELECTOR_KINDS[composition.selector].evaluate(
            run, composition)
    searches = {}
    if config.searches:
        runner = SearchRunner(run, train, num_classes, metadata,
                              lambda ref: checkpoints[ref[1:]])
        searches = {search.name: runner.run(search) for search in config.searches}
    attacked = {name: model for name, model in models.items() if name in records}
    splits: dict[str, dict[str, Any]] = {"test": metrics}
    data = {"test": (x_test, y_test)}
    split_records = {"test": records}
    if "train" in settings.splits:
        data["train"] = train
        split_records["train"] = {name: evaluate_or_resume(
            out / "records" / "train" / f"{name}.csv", models[name], *train, threat,
            radii[name], attack, batch_size=settings.batch_size, progress=progress,
            description=f"{name}/train") for name in records}
        splits["train"] = _counted_from_records(config, split_records["train"], run.kappas,
                                                eps)
    deployed = _grid_compositions(config, run.kappas)
    if settings.exact_grid is not None:
        say(f"exact robustness of the compositions on a grid of spacing "
            f"{settings.exact_grid:g}", progress)
        exact = exact_compositions(Grid(threat, settings.exact_grid), deployed, models, data)
        for split, by_label in exact.items():
            for label, values in by_label.items():
                splits[split][label]["exact"] = values
    if two_dimensional and not (out / REGIONS_FILE).exists():
        shown = "train" if "train" in data else "test"
        say(f"plotting decision regions on the {shown} points", progress)
        draw_decision_regions(out, models, split_records[shown], deployed, *data[shown], threat,
                              attack, shown, num_classes, config.data.name)
    check = _autoattack_check(attacked, records, x_test, y_test, threat, config, out, progress)
    result = {**splits, "autoattack_check": check, **({"searches": searches} if searches else {}),
              "attack": settings.attack.name, "eps": eps,
              "samples": len(y_test), "wall_time_s": round(time.perf_counter() - started, 1)}
    atomic_write_json(out / "metrics.json", result)
    write_reports(out)
    return result


def _grid_compositions(config: ExperimentConfig, kappas: dict[str, float]
                       ) -> dict[str, tuple[CompositionSettings, float]]:
    """The one-branch compositions deployed exactly on a grid (``SelectorKind.exact_on_grid``),
    by label, with the ``κ`` each deploys (``kappas``: as its kind chose it)."""
    return {c.label: (c, kappas[c.label]) for c in config.compositions
            if SELECTOR_KINDS[c.selector].exact_on_grid and len(c.branches) == 1}


def _counted_from_records(config: ExperimentConfig, records: dict[str, Records],
                          kappas: dict[str, float], eps: float) -> dict[str, Any]:
    """Metrics of the attacked models and of the compositions counted from attack records
    alone (at the ``κ`` they deploy on the test split, ``kappas``) on another split."""
    metrics: dict[str, Any] = {
        name: robustness_metrics(r.accurate, r.robust_at(eps)) for name, r in records.items()}
    for composition in config.compositions:
        kappa = kappas.get(composition.label, 1.0)
        parts = [records[name] for name in composition.branches]
        selections = SELECTOR_KINDS[composition.selector].attacked_selections(parts, eps, kappa)
        if selections is None:
            continue
        counted = composition_metrics(parts, records[composition.core], selections)[0]
        metrics[composition.label] = {**counted, "kappa": kappa}
    return metrics


def _radii(config: ExperimentConfig, model: str, eps: float) -> list[float]:
    """Where a model's robustness is evaluated: eps, and every radius its selectors need to be
    counted at each ``κ`` they may deploy."""
    radii = {eps}.union(*(SELECTOR_KINDS[c.selector].attack_radii(c, eps, "test")
                          for c in config.compositions if model in c.branches))
    return sorted(round(radius, 12) for radius in radii)


def _autoattack_check(
    models: dict[str, Any], records: dict[str, Records], x: torch.Tensor, y: torch.Tensor,
    threat: Any, config: ExperimentConfig, out: Path, progress: bool,
) -> dict[str, Any]:
    """Robust accuracy by the evaluation attack and by full AutoAttack (standard version) on the
    first ``autoattack_check`` test points, per model, and the inputs where AutoAttack found a
    flip the evaluation attack missed (``missed_flips``: each a witness that the records' check
    is weaker than AutoAttack on that model)."""
    count = min(config.evaluation.autoattack_check, len(y))
    if count == 0:
        return {}
    attack = make_attack("autoattack", seed=config.seed)
    check = {}
    for name, model in models.items():
        say(f"[{name}] AutoAttack check on {count} test points", progress)
        strong = evaluate_or_resume(
            out / "autoattack" / f"{name}.csv", model, x[:count], y[:count], threat,
            [threat.eps], attack, batch_size=config.evaluation.batch_size, progress=progress,
            description=f"{name}/autoattack",
        )
        reference = records[name]
        evaluation = float((reference.accurate & reference.robust_at(threat.eps))[:count].mean())
        autoattack = float((strong.accurate & strong.robust_at(threat.eps)).mean())
        missed = reference.robust_at(threat.eps)[:count] & ~strong.robust_at(threat.eps)
        check[name] = {
            "missed_flips": np.flatnonzero(missed).tolist(),
            config.evaluation.attack.name: evaluation,
            "autoattack": autoattack,
            "difference_points": round(100 * (evaluation - autoattack), 2),
            "agree_within_1_point": abs(evaluation - autoattack) <= 0.01,
        }
    return check
