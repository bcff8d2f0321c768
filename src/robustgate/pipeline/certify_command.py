"""``robustgate certify``: per-sample certificates of a checkpoint, resumable, with a summary of
certified metrics at the radii asked for."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from robustgate.certify import (
    Smooth,
    max_certifiable_radius,
    traced,
)
from robustgate.config import BOUND_BATCH, SmoothingSettings
from robustgate.distributed import Process
from robustgate.evaluate import (
    BoundCertificates,
    Certificates,
    certified_metrics,
    certify_smoothed,
    certify_with_bounds,
    smoothing_metrics,
)
from robustgate.inputs import check_inputs
from robustgate.io import atomic_write_json, record_settings
from robustgate.models import load_checkpoint, predict_logits
from robustgate.registry import CERTIFICATE_METHODS
from robustgate.threat import ThreatModel


def certify_checkpoint(
    checkpoint: str | Path, x: torch.Tensor, y: torch.Tensor, out: str | Path, method: str,
    norm: str, radii: Sequence[float], smoothing: SmoothingSettings | None = None,
    data: str = "", device: torch.device | str = "cpu", batch_size: int = BOUND_BATCH,
    chunk: int = 100, progress: bool = True, process: Process | None = None,
    trust_code: bool = False,
) -> dict[str, Any]:
    """Certify ``checkpoint`` on ``(x, y)`` into ``out`` by ``method`` (of
    ``registry.CERTIFICATE_METHODS``: randomized smoothing, with its ``smoothing`` settings, or
    bound propagation):
    ``certificates.csv`` (one row per sample) and ``summary.json`` (certified metrics at each
    radius of ``radii`` in ``norm``; smoothing certifies Linf radii through the covering L2
    radius). Everything is checked before anything is written; an interrupted run resumes from
    its partial files. Under ``torchrun`` each ``process`` certifies its shard of the samples,
    and the main process alone writes the merged certificates' summary."""
    process = process or Process()
    bound_propagation = CERTIFICATE_METHODS[method].bound_propagation
    if bound_propagation == (smoothing is not None):
        raise ValueError("smoothing settings (sigma, n0, n, alpha) go with --method smoothing "
                         "and with it only")
    threats = [ThreatModel(norm, eps) for eps in radii]
    if not threats:
        raise ValueError("give at least one radius to summarize (--radii)")
    check_inputs(x)
    model, metadata = load_checkpoint(checkpoint, device, trust_code)
    check_inputs(x, getattr(model, "input_shape", None))
    predict_logits(model, x)  # a diverged model is refused before anything is written
    if bound_propagation:
        traced(model)  # an operation without a rule is refused by name
    dimension = x[0].numel()
    settings = {"checkpoint": str(checkpoint), "method": method, "data": data,
                "samples": len(y), "norm": norm, "radii": sorted(set(radii)),
                **(smoothing.model_dump(exclude={"votes"}) if smoothing else {})}
    out = Path(out)
    record_settings(out / "certify.json", settings, "certificates")  # every rank refuses alike
    started = time.perf_counter()
    summary: dict[str, Any] = {**settings}
    path = out / "certificates.csv"
    if smoothing is not None:
        smooth = Smooth.from_settings(model, smoothing)
        certificates: Certificates | BoundCertificates = certify_smoothed(
            smooth, x, y, smoothing.n0, smoothing.n, smoothing.alpha, smoothing.seed,
            chunk=chunk, path=path, progress=progress, rank=process.rank,
            world_size=process.world_size)
        records = certificates.records(threats[0], radii, dimension)
        largest = max_certifiable_radius(smoothing.sigma, smoothing.n, smoothing.alpha)
        sigma_train = metadata.get("sigma_train")
        summary.update({
            "sigma_train": sigma_train,
            "sigma_differs_from_training": (sigma_train is not None
                                            and sigma_train != smoothing.sigma),
            "max_certifiable_l2_radius": largest, "l2_covering": norm == "linf"})
    else:
        certificates = certify_with_bounds(
            model, x, y, threats[0], radii, method, batch_size=batch_size, path=path,
            progress=progress, rank=process.rank, world_size=process.world_size)
        records = certificates.records()
    by_radius = {
        f"{norm} {threat.eps:g}": (
            smoothing_metrics(records, threat, threat.eps, dimension,
                              summary["max_certifiable_l2_radius"])
            if smoothing is not None else certified_metrics(records, threat.eps))
        for threat in threats}
    summary.update({
        "mean_seconds_per_sample": float(certificates.seconds.mean()) if len(y) else 0.0,
        "wall_time_s": time.perf_counter() - started, "metrics": by_radius})
    if process.is_main:
        atomic_write_json(out / "summary.json", summary)
    return summary
