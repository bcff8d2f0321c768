"""``robustgate certify``: per-sample certificates of a checkpoint, resumable, with a summary of
certified metrics at the radii asked for."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from robustgate.certify import Smooth, covering_l2_radius, max_certifiable_radius
from robustgate.config import SmoothingSettings
from robustgate.evaluate import certified_metrics, certify_smoothed
from robustgate.inputs import check_inputs
from robustgate.io import atomic_write_json
from robustgate.models import load_checkpoint
from robustgate.threat import ThreatModel

METHODS = ("smoothing",)


def certify_checkpoint(
    checkpoint: str | Path, x: torch.Tensor, y: torch.Tensor, out: str | Path,
    smoothing: SmoothingSettings, norm: str, radii: Sequence[float], data: str = "",
    device: torch.device | str = "cpu", chunk: int = 100, progress: bool = True,
) -> dict[str, Any]:
    """Certify the smoothed ``checkpoint`` on ``(x, y)`` into ``out``: ``certificates.csv`` (one
    row per sample) and ``summary.json`` (certified metrics at each radius of ``radii`` in
    ``norm``; Linf radii through the covering L2 radius). Everything is checked before anything
    is written; an interrupted run resumes from ``certificates.partial.csv``."""
    threats = [ThreatModel(norm, eps) for eps in radii]
    if not threats:
        raise ValueError("give at least one radius to summarize (--radii)")
    check_inputs(x)
    model, metadata = load_checkpoint(checkpoint, device)
    check_inputs(x, getattr(model, "input_shape", None))
    dimension = x[0].numel()
    largest = max_certifiable_radius(smoothing.sigma, smoothing.n, smoothing.alpha)
    sigma_train = metadata.get("sigma_train")
    settings = {"checkpoint": str(checkpoint), "method": "smoothing", "data": data,
                "samples": len(y), "norm": norm, **smoothing.model_dump()}
    out = Path(out)
    settings_path = out / "certify.json"
    if settings_path.exists() and json.loads(settings_path.read_text()) != settings:
        raise ValueError(f"{out} holds certificates made with other settings ({settings_path}); "
                         "choose another --out or remove it")
    atomic_write_json(settings_path, settings)
    smooth = Smooth(model, model.num_classes, smoothing.sigma, smoothing.batch_size)
    started = time.perf_counter()
    partial = out / "certificates.partial.csv"
    certificates = certify_smoothed(smooth, x, y, smoothing.n0, smoothing.n, smoothing.alpha,
                                    smoothing.seed, chunk=chunk, partial=partial,
                                    progress=progress)
    certificates.to_csv(out / "certificates.csv")
    partial.unlink(missing_ok=True)
    records = certificates.records(threats[0], radii, dimension)
    by_radius = {}
    for threat in threats:
        l2 = covering_l2_radius(threat, dimension)
        by_radius[f"{norm} {threat.eps:g}"] = {
            **certified_metrics(records, threat.eps), "l2_radius": l2,
            "above_max_certifiable": l2 > largest,
        }
    summary = {
        **settings, "sigma_train": sigma_train,
        "sigma_differs_from_training": sigma_train is not None and sigma_train != smoothing.sigma,
        "max_certifiable_l2_radius": largest,
        "l2_covering": norm == "linf",
        "mean_seconds_per_sample": float(certificates.seconds.mean()) if len(y) else 0.0,
        "wall_time_s": time.perf_counter() - started,
        "metrics": by_radius,
    }
    atomic_write_json(out / "summary.json", summary)
    return summary
