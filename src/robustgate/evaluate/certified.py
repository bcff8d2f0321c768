"""Per-sample certificates (of a smoothed model, or by bound propagation), and the certified
metrics built on them.

A certificate gives, per input, the smoothed prediction (``-1``: abstain), the certified L2
radius and the lower bound ``p_A`` behind it. For a threat of either norm, ``cert_eps(x)`` is
"not abstained and the certified L2 radius reaches the L2 radius covering ``B(x, eps)``"
(``eps`` itself for L2, ``eps∞·√d`` for Linf). An abstained input counts as inaccurate and
certifies nothing, so certified accuracy, certified robust inaccuracy (certified and wrong) and
"not certified" partition the data as their empirical analogues do, and certified records compose
through the same arithmetic (``evaluate.sound_count``).
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from robustgate.certify import ABSTAIN, Smooth, certify_bounds, covering_l2_radius
from robustgate.config import BOUND_BATCH, BoundSettings, SmoothingSettings
from robustgate.evaluate.records import Records
from robustgate.inputs import check_labels
from robustgate.io import atomic_write_text, complete_or_resume, say
from robustgate.models.modes import eval_mode, model_device
from robustgate.threat import ThreatModel

FIELDS = ("index", "label", "prediction", "radius", "p_lower", "seconds")


@dataclass
class Certificates:
    """Per-sample smoothing certificates: labels, predictions (``-1`` abstain), certified L2
    radii, the lower bounds ``p_A``, and the seconds each took."""

    labels: np.ndarray
    predictions: np.ndarray
    radii: np.ndarray
    p_lower: np.ndarray
    seconds: np.ndarray

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.predictions = np.asarray(self.predictions, dtype=np.int64)
        self.radii = np.asarray(self.radii, dtype=np.float64)
        self.p_lower = np.asarray(self.p_lower, dtype=np.float64)
        self.seconds = np.asarray(self.seconds, dtype=np.float64)
        lengths = {len(self.labels), len(self.predictions), len(self.radii), len(self.p_lower),
                   len(self.seconds)}
        if len(lengths) != 1:
            raise ValueError(f"certificates of unequal lengths {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def abstained(self) -> np.ndarray:
        return self.predictions == ABSTAIN

    def certified_at(self, l2_radius: float) -> np.ndarray:
        """``cert``: not abstained and certified on the L2 ball of ``l2_radius``."""
        return ~self.abstained & (self.radii >= l2_radius)

    def records(self, threat: ThreatModel, radii: Sequence[float], dimension: int) -> Records:
        """Records at each radius of ``radii`` in ``threat``'s norm, ``robust`` being ``cert``
        through the covering L2 radius (also at radius 0: an abstention certifies nothing)."""
        robust = {float(eps): self.certified_at(covering_l2_radius(
                      ThreatModel(threat.norm, eps, threat.low, threat.high), dimension))
                  for eps in {0.0, *radii}}
        return Records(self.labels, self.predictions, robust)

    def concatenate(self, other: Certificates) -> Certificates:
        return Certificates(*(np.concatenate([getattr(self, name), getattr(other, name)])
                              for name in ("labels", "predictions", "radii", "p_lower",
                                           "seconds")))

    def to_csv(self, path: str | Path) -> None:
        """One row per sample (atomically): index, label, prediction, radius, p_lower, seconds."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(FIELDS)
        for i in range(len(self)):
            writer.writerow([i, self.labels[i], self.predictions[i], f"{self.radii[i]:.17g}",
                             f"{self.p_lower[i]:.17g}", f"{self.seconds[i]:.4g}"])
        atomic_write_text(path, buffer.getvalue())

    @classmethod
    def read_csv(cls, path: str | Path) -> Certificates:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows and tuple(rows[0]) != FIELDS:
            raise ValueError(f"{path} is not a certificate file (columns {list(rows[0])})")
        columns = {name: [row[name] for row in rows] for name in FIELDS[1:]}
        return cls(np.array(columns["label"], dtype=np.int64),
                   np.array(columns["prediction"], dtype=np.int64),
                   np.array(columns["radius"], dtype=np.float64),
                   np.array(columns["p_lower"], dtype=np.float64),
                   np.array(columns["seconds"], dtype=np.float64))


@dataclass
class BoundCertificates:
    """Per-sample certificates by bound propagation: labels, clean predictions, and at each
    radius (in the threat's norm) the certified margin, the lower bound of
    ``min_{j≠ŷ} (f_ŷ − f_j)`` over the ball (certified where positive); seconds per sample."""

    labels: np.ndarray
    predictions: np.ndarray
    margins: dict[float, np.ndarray]
    seconds: np.ndarray

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.predictions = np.asarray(self.predictions, dtype=np.int64)
        self.margins = {float(r): np.asarray(m, dtype=np.float64) for r, m in self.margins.items()}
        self.seconds = np.asarray(self.seconds, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.labels)

    def records(self) -> Records:
        """Records whose ``robust`` at each radius is the certified flag."""
        return Records(self.labels, self.predictions,
                       {radius: margin > 0 for radius, margin in self.margins.items()})

    def concatenate(self, other: BoundCertificates) -> BoundCertificates:
        return BoundCertificates(
            np.concatenate([self.labels, other.labels]),
            np.concatenate([self.predictions, other.predictions]),
            {r: np.concatenate([self.margins[r], other.margins[r]]) for r in other.margins},
            np.concatenate([self.seconds, other.seconds]))

    def to_csv(self, path: str | Path) -> None:
        """One row per sample (atomically): index, label, prediction, certified@r and margin@r
        for every radius, seconds."""
        radii = sorted(self.margins)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["index", "label", "prediction", *[f"certified@{r:.10g}" for r in radii],
                         *[f"margin@{r:.10g}" for r in radii], "seconds"])
        for i in range(len(self)):
            writer.writerow([i, self.labels[i], self.predictions[i],
                             *[int(self.margins[r][i] > 0) for r in radii],
                             *[f"{self.margins[r][i]:.17g}" for r in radii],
                             f"{self.seconds[i]:.4g}"])
        atomic_write_text(path, buffer.getvalue())

    @classmethod
    def read_csv(cls, path: str | Path) -> BoundCertificates:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        keys = list(rows[0]) if rows else []
        radii = [key.split("@", 1)[1] for key in keys if key.startswith("margin@")]
        return cls([int(row["label"]) for row in rows], [int(row["prediction"]) for row in rows],
                   {float(r): [float(row[f"margin@{r}"]) for row in rows] for r in radii},
                   [float(row["seconds"]) for row in rows])


def certify_with_bounds(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
    radii: Sequence[float], method: str = "ibp", batch_size: int = BOUND_BATCH,
    partial: str | Path | None = None, progress: bool = True, description: str = "certify",
) -> BoundCertificates:
    """Bound certificates of ``model`` on ``(x, y)`` at every radius of ``radii`` (norm and
    domain from ``threat``) by ``method`` (``certify.BOUND_METHODS``), ``batch_size`` inputs at a
    time; resumable from ``partial`` like :func:`certify_smoothed`."""
    check_labels(y, len(x), getattr(model, "num_classes", None))
    radii = sorted({float(r) for r in radii})
    threats = [ThreatModel(threat.norm, r, threat.low, threat.high) for r in radii]
    done = BoundCertificates([], [], {r: [] for r in radii}, [])
    if partial is not None and Path(partial).exists():
        done = BoundCertificates.read_csv(partial)
        if (sorted(done.margins) != radii or len(done) > len(y)
                or not np.array_equal(done.labels, y[: len(done)].cpu().numpy())):
            raise ValueError(f"{partial} holds certificates of other data or radii; remove it "
                             "to start over")
    device = model_device(model)
    with eval_mode(model), tqdm(total=len(x), initial=len(done), desc=description,
                                disable=not progress, leave=False, unit="sample") as bar:
        for start in range(len(done), len(x), batch_size):
            began = time.perf_counter()
            batch = x[start : start + batch_size].to(device)
            margins = {}
            for radius, ball in zip(radii, threats, strict=True):
                predicted, margin = certify_bounds(model, batch, ball, method)
                margins[radius] = margin.cpu().numpy()
            seconds = np.full(len(batch), (time.perf_counter() - began) / len(batch))
            done = done.concatenate(BoundCertificates(
                y[start : start + batch_size].cpu().numpy(), predicted.cpu().numpy(), margins,
                seconds))
            if partial is not None:
                done.to_csv(partial)
            bar.update(len(batch))
    return done


def certified_metrics(records: Records, eps: float) -> dict[str, float]:
    """Natural accuracy of the smoothed prediction, certified accuracy (``acc ∧ cert``),
    certified robust inaccuracy (``¬acc ∧ cert``), not certified and the abstain rate."""
    accurate, certified = records.accurate, records.robust_at(eps)
    return {
        "natural_accuracy": float(accurate.mean()),
        "certified_accuracy": float((accurate & certified).mean()),
        "certified_robust_inaccuracy": float((~accurate & certified).mean()),
        "not_certified": float((~certified).mean()),
        "abstain_rate": float((records.predictions == ABSTAIN).mean()),
    }


def smoothing_metrics(records: Records, threat: ThreatModel, eps: float, dimension: int,
                      largest: float) -> dict[str, Any]:
    """:func:`certified_metrics` of a smoothed model at ``eps`` (in ``threat``'s norm), with the
    L2 radius certified for it and whether that lies above ``largest``, the largest radius the
    certificates' N and α can certify."""
    l2 = covering_l2_radius(ThreatModel(threat.norm, eps, threat.low, threat.high), dimension)
    return {**certified_metrics(records, eps), "l2_radius": l2,
            "above_max_certifiable": l2 > largest}


def certify_smoothed(
    smooth: Smooth, x: torch.Tensor, y: torch.Tensor, n0: int, n: int, alpha: float,
    seed: int = 0, chunk: int = 100, partial: str | Path | None = None, progress: bool = True,
    description: str = "certify",
) -> Certificates:
    """Certificates of ``smooth`` on ``(x, y)``, ``chunk`` inputs at a time; sample ``i`` draws
    its noise from ``seed`` and ``i``, so a run resumed from ``partial`` (the certificates so far,
    rewritten after every chunk) ends as an uninterrupted one."""
    check_labels(y, len(x), smooth.num_classes)
    done = _read_partial(partial, y)
    with tqdm(total=len(x), initial=len(done), desc=description, disable=not progress,
              leave=False, unit="sample") as bar:
        for start in range(len(done), len(x), chunk):
            began = time.perf_counter()
            batch = x[start : start + chunk]
            predictions, radii, p_lower = smooth.certify(batch, n0, n, alpha, seed=seed,
                                                         offset=start)
            seconds = np.full(len(batch), (time.perf_counter() - began) / len(batch))
            done = done.concatenate(Certificates(y[start : start + chunk].cpu().numpy(),
                                                 predictions.numpy(), radii.numpy(),
                                                 p_lower.numpy(), seconds))
            if partial is not None:
                done.to_csv(partial)
            bar.update(len(batch))
    return done


def _read_partial(partial: str | Path | None, y: torch.Tensor) -> Certificates:
    empty = Certificates(*([] for _ in range(5)))
    if partial is None or not Path(partial).exists():
        return empty
    done = Certificates.read_csv(partial)
    if len(done) > len(y) or not np.array_equal(done.labels, y[: len(done)].cpu().numpy()):
        raise ValueError(f"{partial} holds certificates of other data; remove it to start over")
    return done


def certify_or_resume(path: Path, model: nn.Module, settings: SmoothingSettings,
                      x: torch.Tensor, y: torch.Tensor, progress: bool, description: str,
                      ) -> Certificates:
    """The smoothing certificates at ``path`` if complete there, else certify by ``settings``
    (resuming a partial file)."""
    smooth = Smooth.from_settings(model, settings)
    return complete_or_resume(path, Certificates.read_csv, lambda partial: certify_smoothed(
        smooth, x, y, settings.n0, settings.n, settings.alpha, settings.seed, partial=partial,
        progress=progress, description=description))


def bound_certificates_or_resume(
    directory: Path, name: str, model: nn.Module, settings: BoundSettings, methods: list[str],
    x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, radii: list[float], progress: bool,
) -> dict[str, BoundCertificates]:
    """A model's bound certificates by every method of ``methods``, ``directory /
    <name>.<method>.csv`` (resumable files)."""
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
