"""The certified half of an experiment: smoothed models certified on the test points and their
compositions counted from the certificates.

Files in the run directory: ``certificates/test/<model>.csv`` (per-sample certificates,
resumable) and ``records/certified/<composition>.csv`` (the certified composition's records).
A standard core contributes no certificate: in a certified count it adds natural accuracy only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robustgate.certify import Smooth, covering_l2_radius, max_certifiable_radius, stable_radius
from robustgate.config import CompositionSettings, SmoothingSettings
from robustgate.evaluate import (
    Certificates,
    Records,
    Selection,
    certified_metrics,
    certify_smoothed,
    compose_records,
    selection_metrics,
)
from robustgate.evaluate.statistics import clopper_pearson
from robustgate.io import file_name
from robustgate.pipeline.run_directory import say
from robustgate.threat import ThreatModel


def certify_or_resume(path: Path, model: nn.Module, settings: SmoothingSettings,
                      x: torch.Tensor, y: torch.Tensor, progress: bool, description: str,
                      ) -> Certificates:
    """The certificates at ``path`` if complete there, else certify (resuming a partial file)."""
    if path.exists():
        return Certificates.read_csv(path)
    partial = path.with_suffix(".partial.csv")
    smooth = Smooth(model, model.num_classes, settings.sigma, settings.batch_size)
    certificates = certify_smoothed(smooth, x, y, settings.n0, settings.n, settings.alpha,
                                    settings.seed, partial=partial, progress=progress,
                                    description=description)
    certificates.to_csv(path)
    partial.unlink(missing_ok=True)
    return certificates


def certified_model_metrics(certificates: Certificates, settings: SmoothingSettings,
                            threat: ThreatModel, radii: list[float], dimension: int,
                            sigma_train: float | None) -> dict[str, Any]:
    """Certified metrics of one smoothed model at eps and at every radius of ``radii``."""
    records = certificates.records(threat, [threat.eps, *radii], dimension)
    largest = max_certifiable_radius(settings.sigma, settings.n, settings.alpha)
    by_radius = {}
    for eps in sorted({threat.eps, *radii}):
        l2 = covering_l2_radius(ThreatModel(threat.norm, eps), dimension)
        by_radius[f"{eps:g}"] = {**certified_metrics(records, eps), "l2_radius": l2,
                                 "above_max_certifiable": l2 > largest}
    return {**certified_metrics(records, threat.eps), "sigma": settings.sigma,
            "sigma_train": sigma_train, "n": settings.n, "alpha": settings.alpha,
            "samples": len(certificates), "max_certifiable_l2_radius": largest,
            "mean_seconds_per_sample": float(certificates.seconds.mean()),
            "by_radius": by_radius}


def certified_composition(
    composition: CompositionSettings, branch: Certificates, settings: SmoothingSettings,
    core: Records | Certificates, threat: ThreatModel, dimension: int, out: Path,
    progress: bool,
) -> dict[str, Any]:
    """The smoothed branch composed with ``core`` under the smoothing selector deployed at
    ``κ·eps``, counted from the certificates (``Selection.smoothing``): composed natural
    accuracy, composed certified accuracy (sound) and, beside it, the selection taken on the
    clean input."""
    eps, kappa = threat.eps, composition.kappa
    l2 = covering_l2_radius(threat, dimension)
    selection = Selection.smoothing(branch, eps, l2, settings.sigma, settings.n0, settings.n,
                                    settings.alpha, kappa)
    branch_records = branch.records(threat, [eps], dimension)
    if isinstance(core, Certificates):
        core_records = core.records(threat, [eps], dimension)
    else:
        core_records = Records(core.labels[: len(branch)], core.predictions[: len(branch)],
                               {eps: np.zeros(len(branch), bool)})
    composed = compose_records(branch_records, core_records, selection)
    composed.to_csv(out / "records" / "certified" / f"{file_name(composition.label)}.csv")
    certified = composed.accurate & composed.robust_at(eps)
    unattacked = selection.selected & branch_records.accurate & branch_records.robust_at(eps)
    low, high = clopper_pearson(int(certified.sum()), len(certified))
    stability = stable_radius(settings.sigma, kappa * l2, l2, settings.n0, settings.n,
                              settings.alpha)
    say(f"[{composition.label}] certified {100 * certified.mean():.1f}% of {len(certified)} "
        f"(stable where the certified L2 radius is at least {stability:.3g})", progress)
    return {
        "natural_accuracy": float(composed.accurate.mean()),
        "core_natural_accuracy": float(core_records.accurate.mean()),
        "certified_accuracy": float(certified.mean()),
        "certified_accuracy_interval": [low, high],
        "certified_robust_inaccuracy": float((~composed.accurate
                                              & composed.robust_at(eps)).mean()),
        "certified_accuracy_if_selector_not_attacked": float(unattacked.mean()),
        **selection_metrics(branch_records.accurate, selection.selected),
        "stable_rate": float(selection.stable.mean()),
        "selector_l2_radius": kappa * l2, "stable_l2_radius": stability, "kappa": kappa,
        "guarantee": f"per input with probability >= {1 - 2 * settings.alpha:g} (two "
                     f"certificates at alpha {settings.alpha:g}, a union bound)",
        "samples": len(certified), "certified": True,
    }
