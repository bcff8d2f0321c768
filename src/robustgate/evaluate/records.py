"""Per-sample evaluation records: label, prediction, accuracy and robustness at each radius."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robustgate.attacks import Attack, check_robustness
from robustgate.compose import ComposedClassifier
from robustgate.inputs import check_labels
from robustgate.io import atomic_write_text
from robustgate.runner import Check, run_per_sample
from robustgate.table import FLAG, INTEGER, Column, Schema, Table, read_table
from robustgate.threat import ThreatModel

RECORDS = Schema(
    "attack records",
    leading=(Column("label", INTEGER), Column("prediction", INTEGER), Column("accurate", FLAG)),
    per_radius=(Column("robust", FLAG),))


@dataclass
class Records:
    """Per-sample indicators, the atoms of every metric.

    ``robust[eps]`` is ``rob_eps``: the prediction is constant on the ball of radius ``eps``.
    ``index`` holds the inputs' indices in their data set (``0 … n−1`` unless given).
    """

    labels: np.ndarray
    predictions: np.ndarray
    robust: dict[float, np.ndarray]
    index: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.predictions = np.asarray(self.predictions, dtype=np.int64)
        self.robust = {float(eps): np.asarray(r, dtype=bool) for eps, r in self.robust.items()}
        self.index = (np.arange(len(self.labels)) if self.index is None
                      else np.asarray(self.index, dtype=np.int64))
        lengths = {len(self.labels), len(self.predictions), len(self.index),
                   *map(len, self.robust.values())}
        if len(lengths) != 1:
            raise ValueError(f"records of unequal lengths {sorted(lengths)}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def accurate(self) -> np.ndarray:
        """``acc(x) = [ŷ(x) = y]``."""
        return self.predictions == self.labels

    def _indicator(self, eps: float) -> np.ndarray | None:
        """``rob_eps`` where it is known: evaluated, or at ``eps = 0``, where every input is
        robust unless the records say otherwise (a certificate that abstains certifies none)."""
        for radius, indicator in self.robust.items():
            if np.isclose(radius, eps, rtol=1e-9, atol=1e-12):
                return indicator
        return np.ones(len(self), bool) if eps == 0 else None

    def has_radius(self, eps: float) -> bool:
        """Whether ``rob_eps`` is known."""
        return self._indicator(eps) is not None

    def robust_at(self, eps: float) -> np.ndarray:
        """``rob_eps``; raises ``KeyError`` naming the radii that were evaluated."""
        indicator = self._indicator(eps)
        if indicator is None:
            raise KeyError(f"no robustness evaluated at eps={eps}; have {sorted(self.robust)}")
        return indicator

    def table(self) -> Table:
        """The records as a per-sample table: index, label, prediction, accurate, robust@eps."""
        return Table(RECORDS, self.index, {"label": self.labels, "prediction": self.predictions,
                                           "accurate": self.accurate},
                     {"robust": self.robust})

    @classmethod
    def from_table(cls, table: Table, source: str = "records") -> Records:
        """The records of a table of ``RECORDS``; its ``accurate`` column must agree with its
        labels and predictions (``source`` names the table in the error)."""
        records = cls(table.columns["label"], table.columns["prediction"],
                      table.per_radius["robust"], table.index)
        disagree = records.accurate != table.columns["accurate"]
        if disagree.any():
            raise ValueError(f"{source}, row {int(np.argmax(disagree)) + 1}, column accurate: "
                             "disagrees with the label and the prediction")
        return records

    def to_csv(self, path: str | Path) -> None:
        """Write one row per sample (atomically): index, label, prediction, accurate, robust@eps."""
        self.table().write(path)

    @classmethod
    def read_csv(cls, path: str | Path) -> Records:
        """The records written by :meth:`to_csv`, read strictly (``table.read_table``)."""
        return cls.from_table(read_table(path, RECORDS), str(path))


@dataclass
class Routes:
    """Per input, where a composition sent it (``0`` … for the branches, ``len(branches)`` for
    the core) and the selector's score where the selector has one (``None`` otherwise)."""

    routes: np.ndarray
    scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.routes = np.asarray(self.routes, dtype=np.int64)
        if self.scores is not None:
            self.scores = np.asarray(self.scores, dtype=np.float64)
            if self.scores.shape != self.routes.shape:
                raise ValueError(f"{len(self.scores)} scores for {len(self.routes)} routes")

    def to_csv(self, path: str | Path) -> None:
        """Write one row per input (atomically): index, score (empty without one), route."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["index", "score", "route"])
        for i, route in enumerate(self.routes):
            score = "" if self.scores is None else repr(float(self.scores[i]))
            writer.writerow([i, score, int(route)])
        atomic_write_text(path, buffer.getvalue())

    @classmethod
    def read_csv(cls, path: str | Path) -> Routes:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        scored = bool(rows) and rows[0]["score"] != ""
        return cls([int(row["route"]) for row in rows],
                   [float(row["score"]) for row in rows] if scored else None)


def evaluate_model(
    model: nn.Module | ComposedClassifier,
    x: torch.Tensor,
    y: torch.Tensor,
    threat: ThreatModel,
    radii: Sequence[float],
    attack: Attack,
    batch_size: int = 1000,
    progress: bool = True,
    description: str = "evaluate",
    path: str | Path | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Records:
    """Records of ``model`` on ``(x, y)``, with robustness checked by ``attack`` at every radius
    of ``radii`` (norm and domain from ``threat``), ``batch_size`` inputs at a time.

    With ``path``, the records are written there by the resumable runner (``runner``): an
    interrupted evaluation resumes from its partial files, and ``rank`` of ``world_size``
    processes computes its shard of the samples. The attack gets every input's index, so that
    an attack seeded per input gives each input the same answer in any batch. ``model`` is a
    model or a composed classifier (``attacks.check_robustness`` takes either).
    """
    check_labels(y, len(x), getattr(model, "num_classes", None))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not radii:
        raise ValueError("radii must name at least one eps")
    radii = sorted({float(eps) for eps in radii})
    threats = [ThreatModel(threat.norm, eps, threat.low, threat.high) for eps in radii]
    labels = y.cpu().numpy()

    def compute(indices: np.ndarray) -> Table:
        rows = torch.from_numpy(indices)
        predicted, largest = _bisect_radii(model, x[rows], threats, attack, batch_size, rows)
        return Records(labels[indices], predicted.numpy(),
                       {eps: (largest >= position).numpy() for position, eps in enumerate(radii)},
                       indices).table()

    table = run_per_sample(RECORDS, compute, len(x), batch_size, radii, path,
                           same_labels(labels, "records"), progress, description, rank,
                           world_size)
    return Records.from_table(table, str(path or description))


def _bisect_radii(
    model: nn.Module | ComposedClassifier, x: torch.Tensor, threats: Sequence[ThreatModel],
    attack: Attack, batch_size: int, indices: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Predictions and, per input, the index of the largest radius of ``threats`` (sorted) at
    which it is robust (−1: none), found by bisection: robustness on a ball implies it on every
    smaller ball, so about ``log2(len(threats) + 1)`` checks per input instead of one per
    radius."""
    robust_below = torch.full((len(x),), -1, dtype=torch.int64)
    flipped_from = torch.full((len(x),), len(threats), dtype=torch.int64)
    predicted = None
    while bool((open_ := robust_below + 1 < flipped_from).any()):
        middle = (robust_below + flipped_from) // 2
        for index in middle[open_].unique().tolist():
            rows = (open_ & (middle == index)).nonzero().flatten()
            labels, robust = check_robustness(model, x[rows], threats[index], attack,
                                             batch_size=batch_size, indices=indices[rows])
            if predicted is None:
                predicted = torch.empty(len(x), dtype=labels.dtype)
            predicted[rows] = labels.cpu()
            robust = robust.cpu()
            robust_below[rows[robust]] = index
            flipped_from[rows[~robust]] = index
    if predicted is None:
        predicted = check_robustness(model, x, threats[0], attack, batch_size=batch_size,
                                     indices=indices)[0].cpu()
    return predicted, robust_below


def evaluate_or_resume(
    path: str | Path, model: nn.Module | ComposedClassifier, x: torch.Tensor, y: torch.Tensor,
    threat: ThreatModel, radii: Sequence[float], attack: Attack, **options: Any,
) -> Records:
    """:func:`evaluate_model` (same ``options``) into the records file ``path``: read back
    where complete there, else computed (resuming its partial files) and written."""
    return evaluate_model(model, x, y, threat, radii, attack, path=path, **options)


def same_labels(labels: np.ndarray, what: str) -> Check:
    """A runner's check that a table's rows are of the inputs labelled ``labels``."""
    def check(table: Table, source: str) -> None:
        if len(table) and (table.index[-1] >= len(labels)
                           or not np.array_equal(table.columns["label"],
                                                 labels[table.index])):
            raise ValueError(f"{source} holds {what} of other data; remove it to start over")
    return check
