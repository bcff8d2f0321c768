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
from tqdm.auto import tqdm

from robustgate.attacks import Attack, check_robustness
from robustgate.compose import ComposedClassifier
from robustgate.inputs import check_labels
from robustgate.io import atomic_write_text, complete_or_resume
from robustgate.threat import ThreatModel


@dataclass
class Records:
    """Per-sample indicators, the atoms of every metric.

    ``robust[eps]`` is ``rob_eps``: the prediction is constant on the ball of radius ``eps``.
    """

    labels: np.ndarray
    predictions: np.ndarray
    robust: dict[float, np.ndarray]

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.predictions = np.asarray(self.predictions, dtype=np.int64)
        self.robust = {float(eps): np.asarray(r, dtype=bool) for eps, r in self.robust.items()}
        lengths = {len(self.labels), len(self.predictions), *map(len, self.robust.values())}
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

    def to_csv(self, path: str | Path) -> None:
        """Write one row per sample (atomically): index, label, prediction, accurate, robust@eps."""
        radii = sorted(self.robust)
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(
            ["index", "label", "prediction", "accurate", *[f"robust@{r:.10g}" for r in radii]]
        )
        accurate = self.accurate
        for i in range(len(self)):
            writer.writerow(
                [i, self.labels[i], self.predictions[i], int(accurate[i]),
                 *[int(self.robust[r][i]) for r in radii]]
            )
        atomic_write_text(path, buffer.getvalue())

    @classmethod
    def read_csv(cls, path: str | Path) -> Records:
        """The records written by :meth:`to_csv`. A file that is not such a table (not text, a
        column missing, a value that is not a count or a 0/1 flag) or whose ``index`` column is
        not ``0 … n−1`` in order (rows permuted or missing: their indicators would be matched
        to other inputs) is refused with an error naming the file."""
        rows = read_table(path, ("index", "label", "prediction"))
        radii = [key for key in rows[0] if key.startswith("robust@")]
        try:
            radius_of = {key: float(key.split("@", 1)[1]) for key in radii}
        except ValueError:
            raise ValueError(f"{path}: a robustness column is named robust@<radius>, got "
                             f"{radii}") from None
        return cls(
            labels=integer_column(path, rows, "label"),
            predictions=integer_column(path, rows, "prediction"),
            robust={radius_of[key]: flag_column(path, rows, key) for key in radii},
        )


def read_table(path: str | Path, required: Sequence[str]) -> list[dict[str, str]]:
    """The rows of the per-sample CSV table at ``path``, which must be text, hold at least one
    row, have the columns ``required`` and an ``index`` column ``0 … n−1`` in order."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file; give a per-sample CSV table written by "
                         "robustgate") from None
    except csv.Error as error:
        raise ValueError(f"{path} is not a CSV table: {error}") from None
    if not rows:
        raise ValueError(f"{path} holds no records")
    missing = [column for column in required if column not in rows[0]]
    if missing:
        raise ValueError(f"{path} lacks the column(s) {missing}; its columns are "
                         f"{list(rows[0])}, a robustgate per-sample table has "
                         f"{list(required)} and more")
    if integer_column(path, rows, "index") != list(range(len(rows))):
        raise ValueError(f"{path}: the index column is not 0 … {len(rows) - 1} in order (rows "
                         "permuted, missing or repeated); per-sample tables are matched by row, "
                         "so restore the order robustgate wrote")
    return rows


def integer_column(path: str | Path, rows: list[dict[str, str]], column: str) -> list[int]:
    """The integers of ``column``; a value that is not one is an error naming file and row."""
    values = []
    for number, row in enumerate(rows):
        try:
            values.append(int(row[column]))
        except (TypeError, ValueError):
            raise ValueError(f"{path}, row {number + 1}: {column} is {row[column]!r}, not an "
                             "integer") from None
    return values


def flag_column(path: str | Path, rows: list[dict[str, str]], column: str) -> list[bool]:
    """The 0/1 flags of ``column``; anything else is an error naming file and row."""
    flags = []
    for number, row in enumerate(rows):
        if row[column] not in ("0", "1"):
            raise ValueError(f"{path}, row {number + 1}: {column} is {row[column]!r}, not 0 or "
                             "1")
        flags.append(row[column] == "1")
    return flags


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
    partial: str | Path | None = None,
) -> Records:
    """Records of ``model`` on ``(x, y)``, with robustness checked by ``attack`` at every radius
    of ``radii`` (norm and domain from ``threat``).

    With ``partial``, the records of the samples done so far are written there (atomically)
    after every batch, and an earlier partial file is picked up: an interrupted evaluation
    resumes where it stopped. ``model`` is a model or a composed classifier
    (``attacks.check_robustness`` takes either).
    """
    check_labels(y, len(x), getattr(model, "num_classes", None))
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not radii:
        raise ValueError("radii must name at least one eps")
    radii = sorted({float(eps) for eps in radii})
    threats = [ThreatModel(threat.norm, eps, threat.low, threat.high) for eps in radii]
    done = _read_partial(partial, y, radii)
    labels = y.cpu().numpy()
    predictions = list(done.predictions) if done else []
    robust = {eps: list(done.robust_at(eps)) if done else [] for eps in radii}
    with tqdm(total=len(x), initial=len(predictions), desc=description, disable=not progress,
              leave=False, unit="sample") as bar:
        for start in range(len(predictions), len(x), batch_size):
            batch = x[start : start + batch_size]
            predicted, largest = _bisect_radii(model, batch, threats, attack, batch_size)
            for index, eps in enumerate(radii):
                robust[eps] += (largest >= index).tolist()
            predictions += predicted.tolist()
            if partial is not None:
                Records(labels[: len(predictions)], predictions, robust).to_csv(partial)
            bar.update(len(batch))
    return Records(labels, predictions, robust)


def _bisect_radii(
    model: nn.Module | ComposedClassifier, x: torch.Tensor, threats: Sequence[ThreatModel],
    attack: Attack, batch_size: int,
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
                                             batch_size=batch_size)
            if predicted is None:
                predicted = torch.empty(len(x), dtype=labels.dtype)
            predicted[rows] = labels.cpu()
            robust = robust.cpu()
            robust_below[rows[robust]] = index
            flipped_from[rows[~robust]] = index
    if predicted is None:
        predicted = check_robustness(model, x, threats[0], attack,
                                     batch_size=batch_size)[0].cpu()
    return predicted, robust_below


def evaluate_or_resume(
    path: str | Path, model: nn.Module | ComposedClassifier, x: torch.Tensor, y: torch.Tensor,
    threat: ThreatModel, radii: Sequence[float], attack: Attack, **options: Any,
) -> Records:
    """The records at ``path`` if they are complete there; else :func:`evaluate_model` (same
    ``options``), resuming from and writing to ``<path>.partial.csv``, then the complete file."""
    return complete_or_resume(path, Records.read_csv, lambda partial: evaluate_model(
        model, x, y, threat, radii, attack, partial=partial, **options))


def _read_partial(partial: str | Path | None, y: torch.Tensor, radii: Sequence[float]
                  ) -> Records | None:
    if partial is None or not Path(partial).exists():
        return None
    done = Records.read_csv(partial)
    for eps in radii:
        done.robust_at(eps)
    if len(done) > len(y) or not np.array_equal(done.labels, y[: len(done)].cpu().numpy()):
        raise ValueError(f"{partial} holds records of other data; remove it to start over")
    return done
