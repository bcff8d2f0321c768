"""The one per-sample table type: attack records, smoothing certificates and bound certificates
are each a :class:`Schema` of typed columns after an ``index`` column, held in a :class:`Table`,
written and read (strictly) here and nowhere else.

On disk a table is a CSV file: ``index``, the schema's leading columns, per radius ``r`` of the
table one column ``<family>@r`` of every per-radius family (family by family), then the trailing
columns. Integers and 0/1 flags are written as such, reals in each column's own format."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robustgate.io import atomic_write_text

INTEGER, FLAG, REAL = "integer", "flag", "real"
KINDS = (INTEGER, FLAG, REAL)
DTYPES = {INTEGER: np.int64, FLAG: np.bool_, REAL: np.float64}


@dataclass(frozen=True)
class Column:
    """One column: its name (a per-radius family's name before ``@``), what its cells hold
    (``integer``, ``flag`` or ``real``) and, for reals, the format they are written in."""

    name: str
    kind: str
    digits: str = ".17g"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"column {self.name!r}: kind must be one of {KINDS}, got "
                             f"{self.kind!r}")

    def text(self, value: object) -> str:
        if self.kind == FLAG:
            return str(int(bool(value)))
        if self.kind == INTEGER:
            return str(int(value))  # type: ignore[call-overload]
        return format(float(value), self.digits)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Schema:
    """The columns of one kind of per-sample table after ``index``: ``leading`` ones, one column
    per radius of each ``per_radius`` family, then ``trailing`` ones; ``what`` names the kind in
    messages."""

    what: str
    leading: tuple[Column, ...]
    per_radius: tuple[Column, ...] = ()
    trailing: tuple[Column, ...] = ()

    def header(self, radii: Sequence[float]) -> list[str]:
        return ["index", *[column.name for column in self.leading],
                *[radius_column(family.name, radius) for family in self.per_radius
                  for radius in radii],
                *[column.name for column in self.trailing]]


def radius_column(family: str, radius: float) -> str:
    """The column of ``family`` at ``radius``: ``robust@0.1``."""
    return f"{family}@{radius:.10g}"


def canonical_radius(radius: float) -> float:
    """``radius`` as its column names it (10 significant digits), so that a table computed and
    one read back key their radii alike."""
    return float(f"{radius:.10g}")


@dataclass
class Table:
    """Per-sample rows of one schema: the inputs' global ``index`` (increasing), the cells of
    every fixed column by name and of every per-radius family by name and radius."""

    schema: Schema
    index: np.ndarray
    columns: dict[str, np.ndarray]
    per_radius: dict[str, dict[float, np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.index = np.asarray(self.index, dtype=np.int64).reshape(-1)
        fixed = (*self.schema.leading, *self.schema.trailing)
        missing = {column.name for column in fixed} ^ set(self.columns)
        if missing:
            raise ValueError(f"{self.schema.what}: columns {sorted(missing)} are missing or "
                             "unknown")
        self.columns = {column.name: np.asarray(self.columns[column.name],
                                                dtype=DTYPES[column.kind]).reshape(-1)
                        for column in fixed}
        families = {family.name: family for family in self.schema.per_radius}
        if set(self.per_radius) != set(families):
            raise ValueError(f"{self.schema.what}: per-radius families {sorted(self.per_radius)}"
                             f", expected {sorted(families)}")
        radii = {tuple(sorted(cells)) for cells in self.per_radius.values()}
        if len(radii) > 1:
            raise ValueError(f"{self.schema.what}: the per-radius families have different radii "
                             f"{sorted(radii)}")
        self.per_radius = {name: {canonical_radius(radius): np.asarray(
            cells, dtype=DTYPES[families[name].kind]).reshape(-1)
            for radius, cells in sorted(self.per_radius[name].items())} for name in families}
        lengths = {len(self.index), *map(len, self.columns.values()),
                   *(len(cells) for family in self.per_radius.values()
                     for cells in family.values())}
        if len(lengths) > 1:
            raise ValueError(f"{self.schema.what}: columns of unequal lengths {sorted(lengths)}")
        if len(self.index) and (self.index[0] < 0 or np.any(np.diff(self.index) <= 0)):
            raise ValueError(f"{self.schema.what}: the index must be increasing and non-negative")

    def __len__(self) -> int:
        return len(self.index)

    @property
    def radii(self) -> list[float]:
        return sorted(next(iter(self.per_radius.values()), {}))

    def rows(self, chosen: np.ndarray | slice) -> Table:
        """The table of the rows ``chosen`` (a mask, positions or a slice)."""
        return Table(self.schema, self.index[chosen],
                     {name: cells[chosen] for name, cells in self.columns.items()},
                     {name: {radius: cells[chosen] for radius, cells in family.items()}
                      for name, family in self.per_radius.items()})

    def write(self, path: str | Path) -> None:
        """The table as CSV at ``path`` (atomically)."""
        radii = self.radii
        cells: list[tuple[Column, np.ndarray]] = [
            *[(column, self.columns[column.name]) for column in self.schema.leading],
            *[(family, self.per_radius[family.name][radius]) for family in self.schema.per_radius
              for radius in radii],
            *[(column, self.columns[column.name]) for column in self.schema.trailing]]
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(self.schema.header(radii))
        for row, index in enumerate(self.index.tolist()):
            writer.writerow([index, *[column.text(values[row]) for column, values in cells]])
        atomic_write_text(path, buffer.getvalue())


def concatenate(schema: Schema, tables: Sequence[Table], radii: Sequence[float]) -> Table:
    """The rows of ``tables`` in index order (an empty table of ``radii`` where none); no index
    may occur twice."""
    families = {family.name for family in schema.per_radius}
    if not tables:
        empty = np.empty(0)
        return Table(schema, empty.astype(np.int64),
                     {column.name: empty for column in (*schema.leading, *schema.trailing)},
                     {name: {canonical_radius(radius): empty for radius in radii}
                      for name in families})
    for table in tables:
        if table.schema != schema:
            raise ValueError(f"cannot join {table.schema.what} to {schema.what}")
    index = np.concatenate([table.index for table in tables])
    order = np.argsort(index, kind="stable")
    return Table(schema, index[order],
                 {name: np.concatenate([table.columns[name] for table in tables])[order]
                  for name in tables[0].columns},
                 {name: {radius: np.concatenate([table.per_radius[name][radius]
                                                 for table in tables])[order]
                         for radius in tables[0].per_radius[name]} for name in families})


def check_same_index(tables: Sequence[object], what: str) -> None:
    """Refuse to combine per-sample results (anything with an ``index``) whose index columns
    differ: their rows would be matched to other inputs."""
    first = tables[0].index  # type: ignore[attr-defined]
    for number, table in enumerate(tables[1:], start=2):
        other = table.index  # type: ignore[attr-defined]
        if not np.array_equal(first, other):
            where = ("they cover different numbers of inputs" if len(first) != len(other) else
                     f"row {int(np.argmax(first != other)) + 1} differs")
            raise ValueError(f"{what}: the index column of table {number} differs from that of "
                             f"table 1 ({where}); per-sample tables combine row by row only "
                             "when they are of the same inputs in the same order")


def read_table(path: str | Path, schema: Schema, complete: bool = True) -> Table:
    """The table of ``schema`` at ``path``, read strictly: a file that is not text or not CSV,
    whose columns are not the schema's, whose cells are not integers, 0/1 flags or finite reals
    as their columns ask, or whose ``index`` is not ``0 … n−1`` in order (``complete``; else
    increasing) is refused with an error naming the file, the row (1: the first after the
    header) and the column."""
    try:
        with open(path, newline="") as handle:
            text = handle.read()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file; give a per-sample CSV table written by "
                         "robustgate") from None
    if "\0" in text:
        raise ValueError(f"{path} is not a text file (it holds NUL bytes); give a per-sample CSV "
                         "table written by robustgate")
    try:
        lines = list(csv.reader(io.StringIO(text)))
    except csv.Error as error:
        raise ValueError(f"{path} is not a CSV table: {error}") from None
    if not lines:
        raise ValueError(f"{path} is empty; a per-sample table starts with its header")
    header, body = lines[0], lines[1:]
    radii = _radii_of(path, header, schema)
    expected = schema.header(radii)
    if header != expected:
        missing = [name for name in expected if name not in header]
        unknown = [name for name in header if name not in expected]
        what = "; ".join([*([f"it lacks the column(s) {missing}"] if missing else []),
                          *([f"it has the unknown column(s) {unknown}"] if unknown else [])]
                         ) or "its columns are in another order"
        raise ValueError(f"{path} is not a table of {schema.what}: {what}; its columns are "
                         f"{header}, expected {expected}")
    if complete and not body:
        raise ValueError(f"{path} holds no rows")
    kinds = [Column("index", INTEGER),
             *schema.leading, *[family for family in schema.per_radius for _ in radii],
             *schema.trailing]
    cells = []
    for number, line in enumerate(body, start=1):
        if len(line) != len(header):
            raise ValueError(f"{path}, row {number}: {len(line)} cells, the header has "
                             f"{len(header)}")
        cells.append([_cell(path, number, name, column, text)
                      for name, column, text in zip(header, kinds, line, strict=True)])
    values = {name: np.array([row[position] for row in cells], dtype=DTYPES[column.kind])
              for position, (name, column) in enumerate(zip(header, kinds, strict=True))}
    index = values["index"]
    order = np.arange(len(index)) if complete else None
    if order is not None and not np.array_equal(index, order):
        row = int(np.argmax(index != order)) + 1
        raise ValueError(f"{path}, row {row}, column index: {int(index[row - 1])}, expected "
                         f"{row - 1}; the index column is not 0 … {len(index) - 1} in order "
                         "(rows permuted, missing or repeated would be matched to other "
                         "inputs): restore the order robustgate wrote")
    if order is None and len(index) and (index[0] < 0 or np.any(np.diff(index) <= 0)):
        row = 1 if index[0] < 0 else int(np.argmax(np.diff(index) <= 0)) + 2
        raise ValueError(f"{path}, row {row}, column index: {int(index[row - 1])} does not "
                         "follow the row before; the index must increase")
    return Table(schema, index,
                 {column.name: values[column.name]
                  for column in (*schema.leading, *schema.trailing)},
                 {family.name: {radius: values[radius_column(family.name, radius)]
                                for radius in radii} for family in schema.per_radius})


def _radii_of(path: str | Path, header: list[str], schema: Schema) -> list[float]:
    if not schema.per_radius:
        return []
    prefix = f"{schema.per_radius[0].name}@"
    radii = []
    for name in header:
        if name.startswith(prefix):
            try:
                radii.append(float(name.removeprefix(prefix)))
            except ValueError:
                raise ValueError(f"{path}, column {name}: a per-radius column is named "
                                 f"{prefix}<radius>") from None
    return radii


def _cell(path: str | Path, number: int, name: str, column: Column, text: str
          ) -> int | bool | float:
    if column.kind == FLAG:
        if text not in ("0", "1"):
            raise ValueError(f"{path}, row {number}, column {name}: {text!r} is not 0 or 1")
        return text == "1"
    try:
        value: int | float = int(text) if column.kind == INTEGER else float(text)
    except ValueError:
        expected = "an integer" if column.kind == INTEGER else "a number"
        raise ValueError(f"{path}, row {number}, column {name}: {text!r} is not "
                         f"{expected}") from None
    if column.kind == REAL and not math.isfinite(value):
        raise ValueError(f"{path}, row {number}, column {name}: {text!r} is not finite")
    return value
