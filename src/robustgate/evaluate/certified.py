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

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robustgate.certify import ABSTAIN, Smooth, certify_bounds, covering_l2_radius
from robustgate.config import BOUND_BATCH, BoundSettings, SmoothingSettings
from robustgate.evaluate.records import Records, same_labels
from robustgate.inputs import check_labels
from robustgate.io import say
from robustgate.models.modes import eval_mode, model_device
from robustgate.runner import contiguous_runs, run_per_sample
from robustgate.table import FLAG, INTEGER, REAL, Column, Schema, Table, radius_column, read_table
from robustgate.threat import ThreatModel

SECONDS = Column("seconds", REAL, ".4g")
SMOOTHING_CERTIFICATES = Schema(
    "smoothing certificates",
    leading=(Column("label", INTEGER), Column("prediction", INTEGER), Column("radius", REAL),
             Column("p_lower", REAL)),
    trailing=(SECONDS,))
BOUND_CERTIFICATES = Schema(
    "bound certificates", leading=(Column("label", INTEGER), Column("prediction", INTEGER)),
    per_radius=(Column("certified", FLAG), Column("margin", REAL)), trailing=(SECONDS,))


@dataclass
class Certificates:
    """Per-sample smoothing certificates: labels, predictions (``-1`` abstain), certified L2
    radii, the lower bounds ``p_A``, the seconds each took, and the inputs' indices."""

    labels: np.ndarray
    predictions: np.ndarray
    radii: np.ndarray
    p_lower: np.ndarray
    seconds: np.ndarray
    index: np.ndarray | None = None

    def __post_init__(self) -> None:
        table = self.table()
        self.labels, self.predictions, self.radii, self.p_lower, self.seconds = (
            table.columns[name] for name in ("label", "prediction", "radius", "p_lower",
                                             "seconds"))
        self.index = table.index

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
        return Records(self.labels, self.predictions, robust, self.index)

    def table(self) -> Table:
        """The certificates as a per-sample table: index, label, prediction, radius, p_lower,
        seconds."""
        index = np.arange(len(self.labels)) if self.index is None else self.index
        return Table(SMOOTHING_CERTIFICATES, index, {
            "label": self.labels, "prediction": self.predictions, "radius": self.radii,
            "p_lower": self.p_lower, "seconds": self.seconds})

    @classmethod
    def from_table(cls, table: Table) -> Certificates:
        return cls(*(table.columns[name] for name in ("label", "prediction", "radius",
                                                      "p_lower", "seconds")), table.index)

    def to_csv(self, path: str | Path) -> None:
        """One row per sample (atomically): index, label, prediction, radius, p_lower, seconds."""
        self.table().write(path)

    @classmethod
    def read_csv(cls, path: str | Path) -> Certificates:
        """The certificates written by :meth:`to_csv`, read strictly (``table.read_table``)."""
        return cls.from_table(read_table(path, SMOOTHING_CERTIFICATES))


@dataclass
class BoundCertificates:
    """Per-sample certificates by bound propagation: labels, clean predictions, and at each
    radius (in the threat's norm) the certified margin, the lower bound of
    ``min_{j≠ŷ} (f_ŷ − f_j)`` over the ball (certified where positive); seconds per sample; the
    inputs' indices."""

    labels: np.ndarray
    predictions: np.ndarray
    margins: dict[float, np.ndarray]
    seconds: np.ndarray
    index: np.ndarray | None = None

    def __post_init__(self) -> None:
        table = self.table()
        self.labels, self.predictions, self.seconds = (
            table.columns[name] for name in ("label", "prediction", "seconds"))
        self.margins, self.index = table.per_radius["margin"], table.index

    def __len__(self) -> int:
        return len(self.labels)

    def records(self) -> Records:
        """Records whose ``robust`` at each radius is the certified flag."""
        return Records(self.labels, self.predictions,
                       {radius: margin > 0 for radius, margin in self.margins.items()},
                       self.index)

    def table(self) -> Table:
        """The certificates as a per-sample table: index, label, prediction, certified@r and
        margin@r for every radius, seconds."""
        index = np.arange(len(self.labels)) if self.index is None else self.index
        return Table(BOUND_CERTIFICATES, index,
                     {"label": self.labels, "prediction": self.predictions,
                      "seconds": self.seconds},
                     {"certified": {radius: np.asarray(margin) > 0
                                    for radius, margin in self.margins.items()},
                      "margin": self.margins})

    @classmethod
    def from_table(cls, table: Table, source: str = "bound certificates") -> BoundCertificates:
        """The certificates of a table of ``BOUND_CERTIFICATES``; its ``certified`` flags must
        agree with its margins (``source`` names the table in the error)."""
        for radius, margin in table.per_radius["margin"].items():
            disagree = table.per_radius["certified"][radius] != (margin > 0)
            if disagree.any():
                raise ValueError(f"{source}, row {int(np.argmax(disagree)) + 1}, column "
                                 f"{radius_column('certified', radius)}: disagrees with the "
                                 "margin")
        return cls(table.columns["label"], table.columns["prediction"],
                   table.per_radius["margin"], table.columns["seconds"], table.index)

    def to_csv(self, path: str | Path) -> None:
        """One row per sample (atomically): index, label, prediction, certified@r and margin@r
        for every radius, seconds."""
        self.table().write(path)

    @classmethod
    def read_csv(cls, path: str | Path) -> BoundCertificates:
        """The certificates written by :meth:`to_csv`, read strictly (``table.read_table``)."""
        return cls.from_table(read_table(path, BOUND_CERTIFICATES), str(path))


def certify_with_bounds(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
    radii: Sequence[float], method: str = "ibp", batch_size: int = BOUND_BATCH,
    path: str | Path | None = None, progress: bool = True, description: str = "certify",
    rank: int = 0, world_size: int = 1,
) -> BoundCertificates:
    """Bound certificates of ``model`` on ``(x, y)`` at every radius of ``radii`` (norm and
    domain from ``threat``) by ``method`` (``certify.BOUND_METHODS``), ``batch_size`` inputs at a
    time; with ``path``, written there by the resumable, sharded runner like
    :func:`certify_smoothed`."""
    check_labels(y, len(x), getattr(model, "num_classes", None))
    radii = sorted({float(r) for r in radii})
    threats = [ThreatModel(threat.norm, r, threat.low, threat.high) for r in radii]
    labels = y.cpu().numpy()
    device = model_device(model)

    def compute(indices: np.ndarray) -> Table:
        began = time.perf_counter()
        batch = x[torch.from_numpy(indices)].to(device)
        margins = {}
        for radius, ball in zip(radii, threats, strict=True):
            predicted, margin = certify_bounds(model, batch, ball, method)
            margins[radius] = margin.cpu().numpy()
        seconds = np.full(len(batch), (time.perf_counter() - began) / len(batch))
        return BoundCertificates(labels[indices], predicted.cpu().numpy(), margins, seconds,
                                 indices).table()

    with eval_mode(model):
        table = run_per_sample(BOUND_CERTIFICATES, compute, len(x), batch_size, radii, path,
                               same_labels(labels, "certificates"), progress, description,
                               rank, world_size)
    return BoundCertificates.from_table(table)


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
    seed: int = 0, chunk: int = 100, path: str | Path | None = None, progress: bool = True,
    description: str = "certify", rank: int = 0, world_size: int = 1,
) -> Certificates:
    """Certificates of ``smooth`` on ``(x, y)``, ``chunk`` inputs at a time; sample ``i`` draws
    its noise from ``seed`` and ``i``, so that neither its chunk nor its shard changes it. With
    ``path``, written there by the resumable runner (``runner``): an interrupted run resumes
    from its partial files and ends as an uninterrupted one, and ``rank`` of ``world_size``
    processes computes its shard."""
    check_labels(y, len(x), smooth.num_classes)
    labels = y.cpu().numpy()

    def compute(indices: np.ndarray) -> Table:
        began = time.perf_counter()
        predictions, radii, p_lower = (torch.cat(parts) for parts in zip(*(
            smooth.certify(x[run[0] : run[-1] + 1], n0, n, alpha, seed=seed, offset=int(run[0]))
            for run in contiguous_runs(indices)), strict=True))
        seconds = np.full(len(indices), (time.perf_counter() - began) / len(indices))
        return Certificates(labels[indices], predictions.numpy(), radii.numpy(),
                            p_lower.numpy(), seconds, indices).table()

    return Certificates.from_table(run_per_sample(
        SMOOTHING_CERTIFICATES, compute, len(x), chunk, (), path,
        same_labels(labels, "certificates"), progress, description, rank, world_size))


def certify_or_resume(path: Path, model: nn.Module, settings: SmoothingSettings,
                      x: torch.Tensor, y: torch.Tensor, progress: bool, description: str,
                      rank: int = 0, world_size: int = 1) -> Certificates:
    """The smoothing certificates at ``path`` if complete there, else certify by ``settings``
    (resuming its partial files; ``rank`` of ``world_size`` computes its shard)."""
    smooth = Smooth.from_settings(model, settings)
    return certify_smoothed(smooth, x, y, settings.n0, settings.n, settings.alpha,
                            settings.seed, path=path, progress=progress,
                            description=description, rank=rank, world_size=world_size)


def bound_certificates_or_resume(
    directory: Path, name: str, model: nn.Module, settings: BoundSettings, methods: list[str],
    x: torch.Tensor, y: torch.Tensor, threat: ThreatModel, radii: list[float], progress: bool,
    rank: int = 0, world_size: int = 1,
) -> dict[str, BoundCertificates]:
    """A model's bound certificates by every method of ``methods``, ``directory /
    <name>.<method>.csv`` (resumable files; ``rank`` of ``world_size`` computes its shard)."""
    certificates = {}
    for method in methods:
        path = directory / f"{name}.{method}.csv"
        if not path.exists():
            say(f"[{name}] certifying by {method} at " + ", ".join(f"{r:g}" for r in radii),
                progress)
        certificates[method] = certify_with_bounds(
            model, x, y, threat, radii, method, batch_size=settings.batch_size, path=path,
            progress=progress, description=f"{name}/{method}", rank=rank,
            world_size=world_size)
    return certificates
