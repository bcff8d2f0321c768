"""The certified half of an experiment: smoothed models and models with bound settings certified
on the test points, and their compositions counted from the certificates.

Files in the run directory: ``certificates/test/<model>.csv`` (smoothing) and
``certificates/test/<model>.<method>.csv`` (bound propagation; per-sample, resumable;
``certificates/validation/`` beside, for a bound selector's operating point),
``records/certified/<composition>.csv`` (the certified composition's records) and
``exported/<composition>.pt2`` (a composition of interval-bound selectors as one program). A core
without a certificate adds natural accuracy only to a certified count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robustgate.certify import (
    INTERVAL_METHODS,
    Smooth,
    covering_l2_radius,
    max_certifiable_radius,
    stable_radius,
    vote_radius,
)
from robustgate.compose import ComposedClassifier
from robustgate.config import (
    BoundSettings,
    CompositionSettings,
    ExperimentConfig,
    SmoothingSettings,
)
from robustgate.evaluate import (
    BoundCertificates,
    Certificates,
    Records,
    Selection,
    certified_metrics,
    certify_smoothed,
    certify_with_bounds,
    compose_records,
    selection_metrics,
    smoothing_metrics,
)
from robustgate.evaluate.composition import selection_radii
from robustgate.evaluate.operating_points import SelectionAt, choose_kappa, operating_curve
from robustgate.evaluate.statistics import clopper_pearson
from robustgate.io import complete_or_resume, file_name
from robustgate.models.modes import model_device, predict_logits
from robustgate.pipeline.run_directory import say
from robustgate.select import BoundSelector
from robustgate.threat import ThreatModel


def certify_or_resume(path: Path, model: nn.Module, settings: SmoothingSettings,
                      x: torch.Tensor, y: torch.Tensor, progress: bool, description: str,
                      ) -> Certificates:
    """The certificates at ``path`` if complete there, else certify (resuming a partial file)."""
    smooth = Smooth(model, model.num_classes, settings.sigma, settings.batch_size)
    return complete_or_resume(path, Certificates.read_csv, lambda partial: certify_smoothed(
        smooth, x, y, settings.n0, settings.n, settings.alpha, settings.seed, partial=partial,
        progress=progress, description=description))


def certified_model_metrics(certificates: Certificates, settings: SmoothingSettings,
                            threat: ThreatModel, radii: list[float], dimension: int,
                            sigma_train: float | None) -> dict[str, Any]:
    """Certified metrics of one smoothed model at eps and at every radius of ``radii``."""
    records = certificates.records(threat, [threat.eps, *radii], dimension)
    largest = max_certifiable_radius(settings.sigma, settings.n, settings.alpha)
    by_radius = {f"{eps:g}": smoothing_metrics(records, threat, eps, dimension, largest)
                 for eps in sorted({threat.eps, *radii})}
    return {**certified_metrics(records, threat.eps), "sigma": settings.sigma,
            "sigma_train": sigma_train, "n": settings.n, "alpha": settings.alpha,
            "samples": len(certificates), "max_certifiable_l2_radius": largest,
            "mean_seconds_per_sample": float(certificates.seconds.mean()),
            "by_radius": by_radius}


def _uncertified(core: Records, samples: int, eps: float) -> Records:
    """A core without a certificate, on the first ``samples`` points: its answers, robust
    nowhere."""
    return Records(core.labels[:samples], core.predictions[:samples],
                   {eps: np.zeros(samples, bool)})


def _certified_count(composition: CompositionSettings, branch: Records, core: Records,
                     selection: Selection, kappa: float, out: Path) -> dict[str, Any]:
    """The certified composition's records (written beside the run) and metrics: composed
    natural and certified accuracy (with its 95% interval), certified robust inaccuracy,
    selection and stability rates, and the selection taken on the clean input beside them."""
    eps = selection.eps
    composed = compose_records(branch, core, selection)
    composed.to_csv(out / "records" / "certified" / f"{file_name(composition.label)}.csv")
    certified = composed.accurate & composed.robust_at(eps)
    low, high = clopper_pearson(int(certified.sum()), len(certified))
    unattacked = selection.selected & branch.accurate & branch.robust_at(eps)
    return {
        "natural_accuracy": float(composed.accurate.mean()),
        "core_natural_accuracy": float(core.accurate.mean()),
        "certified_accuracy": float(certified.mean()),
        "certified_accuracy_interval": [low, high],
        "certified_robust_inaccuracy": float((~composed.accurate
                                              & composed.robust_at(eps)).mean()),
        "certified_accuracy_if_selector_not_attacked": float(unattacked.mean()),
        **selection_metrics(branch.accurate, selection.selected),
        "stable_rate": float(selection.stable.mean()), "kappa": kappa,
        "samples": len(certified), "certified": True,
    }


def certified_composition(
    composition: CompositionSettings, branch: Certificates, settings: SmoothingSettings,
    core: Records | Certificates, threat: ThreatModel, dimension: int, out: Path,
    progress: bool, core_settings: SmoothingSettings | None = None,
) -> dict[str, Any]:
    """The smoothed branch composed with ``core`` under the smoothing selector deployed at
    ``κ·eps``, counted from the certificates (``Selection.smoothing``). A smoothed core (its
    certificates and ``core_settings``) is deployed as a majority vote of ``votes`` draws: it
    counts where its certified radius reaches ``certify.vote_radius``, the margin that vote
    needs to answer the certified class everywhere in the ball."""
    eps, kappa = threat.eps, composition.kappa
    l2 = covering_l2_radius(threat, dimension)
    selection = Selection.smoothing(branch, eps, l2, settings.sigma, settings.n0, settings.n,
                                    settings.alpha, kappa)
    if isinstance(core, Certificates):
        if core_settings is None:
            raise ValueError("a smoothed core is counted with its smoothing settings (its vote)")
        voted = vote_radius(core_settings.sigma, l2, core_settings.votes, core_settings.alpha)
        core_records = Records(core.labels, core.predictions, {eps: core.certified_at(voted)})
    else:
        core_records = _uncertified(core, len(branch), eps)
    metrics = _certified_count(composition, branch.records(threat, [eps], dimension),
                               core_records, selection, kappa, out)
    stability = stable_radius(settings.sigma, kappa * l2, l2, settings.n0, settings.n,
                              settings.alpha)
    say(f"[{composition.label}] certified {100 * metrics['certified_accuracy']:.1f}% of "
        f"{len(branch)} (stable where the certified L2 radius is at least {stability:.3g})",
        progress)
    if isinstance(core, Certificates):
        failure = 2 * settings.alpha + 2 * core_settings.alpha
        guarantee = (f"per input with probability >= {1 - failure:g} (the branch's certificate "
                     "and its deployed selector, the core's certificate and its deployed vote of "
                     f"{core_settings.votes}, a union bound)")
        extra = {"core_vote_l2_radius": voted}
    else:
        guarantee = (f"per input with probability >= {1 - 2 * settings.alpha:g} (2 "
                     f"certificates at alpha {settings.alpha:g}, a union bound)")
        extra = {}
    return {**metrics, "selector_l2_radius": kappa * l2, "stable_l2_radius": stability,
            **extra, "guarantee": guarantee}


def bound_methods(config: ExperimentConfig, name: str) -> list[str]:
    """The bound methods a model is certified by: its settings' and its selectors'."""
    settings = config.models[name].bounds
    assert settings is not None
    deployed = {c.bound_method for c in config.compositions
                if c.selector == "bounds" and name in c.branches}
    return ["ibp", *sorted((set(settings.methods) | deployed) - {"ibp"})]


def bound_radii(config: ExperimentConfig, name: str, split: str = "test") -> list[float]:
    """Where a model is certified on the test points: eps, the summary radii, and ``κ·eps`` and
    ``(κ+1)·eps`` for every ``κ`` each bound selector of it may deploy; on the validation points
    (``split``), eps and the radii of the bound selectors whose ``κ`` is chosen there."""
    eps = config.evaluation.threat.eps
    radii = {eps, *(config.evaluation.certified_radii if split == "test" else [])}
    for composition in config.compositions:
        if (composition.selector == "bounds" and name in composition.branches
                and (split == "test" or composition.operating_point is not None)):
            for kappa in composition.kappas:
                radii |= selection_radii("bounds", eps, kappa)
    return sorted(radii)


def bound_certificates_or_resume(
    directory: Path, name: str, model: nn.Module, settings: BoundSettings, methods: list[str],
    x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, radii: list[float], progress: bool,
) -> dict[str, BoundCertificates]:
    """A model's bound certificates by every method of ``methods`` (resumable files)."""
    certificates = {}
    for method in methods:
        path = directory / f"{name}.{method}.csv"
        if not path.exists():
            say(f"[{name}] certifying by {method} at " + ", ".join(f"{r:g}" for r in radii),
                progress)
        certificates[method] = complete_or_resume(
            path, BoundCertificates.read_csv, lambda partial, method=method: certify_with_bounds(
                model, x, y, threat, radii, method, batch_size=settings.batch_size,
                partial=partial, progress=progress, description=f"{name}/{method}"))
    return certificates


def bound_model_metrics(certificates: dict[str, BoundCertificates], empirical: Records,
                        radii: list[float]) -> dict[str, Any]:
    """Certified metrics by each method at each radius, beside the empirical robust accuracy at
    the radii the model was attacked at (on the same test points)."""
    samples = len(next(iter(certificates.values())))
    attacked = Records(empirical.labels[:samples], empirical.predictions[:samples],
                       {r: flags[:samples] for r, flags in empirical.robust.items()})
    by_method = {}
    for method, certified in certificates.items():
        records = certified.records()
        by_method[method] = {
            f"{radius:g}": {**certified_metrics(records, radius),
                            "empirical_robust_accuracy": (
                                float((attacked.accurate & attacked.robust_at(radius)).mean())
                                if attacked.has_radius(radius) else None)}
            for radius in radii}
    return {"bounds": by_method, "bound_samples": samples,
            "bound_seconds_per_sample": {method: float(c.seconds.mean())
                                         for method, c in certificates.items()}}


def bound_selection_at(branch: dict[str, BoundCertificates], method: str) -> SelectionAt:
    """The bound selector deployed with ``method``, its stability read from the branch's IBP
    certificates (``Selection.bounds``)."""
    interval = branch["ibp"].records()
    return lambda deployed, eps, kappa: Selection.bounds(
        deployed, interval, eps, kappa, with_interval_bounds=method in INTERVAL_METHODS)


def certified_core_part(core: dict[str, BoundCertificates] | None, core_records: Records,
                        samples: int, eps: float) -> Records:
    """The core's records in a certified count: robust where any of its bound methods certifies
    it, nowhere without a certificate."""
    if core is None:
        return _uncertified(core_records, samples, eps)
    return Records(core["ibp"].labels, core["ibp"].predictions,
                   {eps: np.logical_or.reduce([c.records().robust_at(eps)
                                               for c in core.values()])})


def bound_operating_point(
    composition: CompositionSettings, config: ExperimentConfig, models: dict[str, nn.Module],
    validation: tuple[torch.Tensor, torch.Tensor] | None, threat: ThreatModel, out: Path,
    progress: bool,
) -> dict[str, Any]:
    """The bound selector's ``κ`` chosen on the calibration points (``evaluate.operating_points``
    on certified records): the branch and a core with bound settings certified there
    (resumable files in ``certificates/validation``), a core without them by its answers."""
    if validation is None:
        raise ValueError(f"composition {composition.label!r}: an operating point is chosen on "
                         "validation data: set data.validation_size")
    point = composition.operating_point
    assert point is not None
    limit = config.calibration.limit
    x, y = validation[0][:limit], validation[1][:limit]
    directory = out / "certificates" / "validation"
    name, core = composition.branches[0], composition.core
    say(f"[{composition.label}] choosing kappa on {len(y)} validation points", progress)
    branch = bound_certificates_or_resume(
        directory, name, models[name], config.models[name].bounds,
        ["ibp", *({composition.bound_method} - {"ibp"})], x, y, threat,
        bound_radii(config, name, "validation"), progress)
    core_bounds = config.models[core].bounds
    core_certificates = None if core_bounds is None else bound_certificates_or_resume(
        directory, core, models[core], core_bounds, bound_methods(config, core), x, y, threat,
        bound_radii(config, core, "validation"), progress)
    answers = Records(y.numpy(), predict_logits(models[core], x).argmax(1).cpu().numpy(), {})
    return choose_kappa(branch[composition.bound_method].records(),
                        certified_core_part(core_certificates, answers, len(y), threat.eps),
                        threat.eps, point.kappas, point.max_accuracy_drop,
                        bound_selection_at(branch, composition.bound_method))


def bound_composition(
    composition: CompositionSettings, branch: dict[str, BoundCertificates],
    core: dict[str, BoundCertificates] | None, core_records: Records, threat: ThreatModel,
    models: dict[str, nn.Module], x_test: torch.Tensor, out: Path, progress: bool,
    operating_point: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The branch composed with the core under the bound selector deployed at ``κ·eps`` (``κ``
    as configured, or chosen on validation data: ``operating_point``, from
    :func:`bound_operating_point`), counted from the certificates (``Selection.bounds``: stable
    where IBP certifies ``(κ+1)·eps``), the core counting only where it is certified itself (by
    any of its methods); with an IBP selector, the composition is exported as one program, and
    its answers compared with the Python object's on the whole test set."""
    eps = threat.eps
    kappa = composition.kappa if operating_point is None else operating_point["chosen"]["kappa"]
    deployed = branch[composition.bound_method].records()
    selection_at = bound_selection_at(branch, composition.bound_method)
    core_part = certified_core_part(core, core_records, len(deployed), eps)
    metrics = {**_certified_count(composition, deployed, core_part,
                                  selection_at(deployed, eps, kappa), kappa, out),
               "bound_method": composition.bound_method,
               "guarantee": "deterministic (bound propagation)"}
    if operating_point is not None:
        metrics["operating_point"] = {**operating_point, "test_curve": operating_curve(
            deployed, core_part, eps, composition.kappas, selection_at)}
    say(f"[{composition.label}] certified {100 * metrics['certified_accuracy']:.1f}% of "
        f"{len(deployed)}" + ("" if operating_point is None else f" at kappa {kappa:g}"),
        progress)
    if composition.bound_method == "ibp":
        metrics["export"] = _export_check(composition, kappa, models, threat, x_test, out)
    return metrics


def _export_check(composition: CompositionSettings, kappa: float, models: dict[str, nn.Module],
                  threat: ThreatModel, x: torch.Tensor, out: Path) -> dict[str, Any]:
    """Export the composition deployed at ``κ = kappa`` and compare the exported program's
    labels and routes with the Python object's on every input of ``x``."""
    branch = models[composition.branches[0]]
    deployed = ComposedClassifier(branch, BoundSelector(branch, threat, "ibp", kappa),
                                  models[composition.core])
    path = deployed.export(out / "exported" / f"{file_name(composition.label)}.pt2", x[:2])
    program = torch.export.load(path).module()
    agree, total = 0, 0
    for start in range(0, len(x), 500):
        batch = x[start : start + 500]
        labels, routes = deployed.predict(batch)
        exported_labels, exported_routes = program(batch.to(model_device(branch)))
        agree += int(((exported_labels.cpu() == labels) & (exported_routes.cpu() == routes))
                     .sum())
        total += len(batch)
    return {"path": str(path.relative_to(out)), "inputs": total, "agreeing": agree,
            "identical": agree == total}
