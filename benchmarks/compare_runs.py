"""The identity of results across a change: two run directories of the same config compared file
by file, timing aside.

    python benchmarks/compare_runs.py BEFORE AFTER [BEFORE AFTER ...]

Every per-sample table (``*.csv``) is compared value by value, its ``seconds`` column aside; every
JSON file (``metrics.json``, summaries, candidates) figure by figure, wall times and seconds per
sample aside; every checkpoint (``*.safetensors``) byte by byte, and every training state
(``*.pt``, its zip archive named after the temporary file it was written to) tensor by tensor.
Files only one side holds are listed. The reports (``report.md``, ``report.html``) and plots are
drawn from these and carry the wall time, so they are left out. Exits 1 where anything differs.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import torch

TIMING_COLUMNS = {"seconds"}
TIMING_KEYS = {"wall_time_s", "mean_seconds_per_sample", "bound_seconds_per_sample",
               "seconds"}
LEFT_OUT = {".md", ".html", ".png", ".log", ".pt2", ".db"}


def _files(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")
            if path.is_file() and path.suffix not in LEFT_OUT}


def _csv_differences(before: Path, after: Path) -> list[str]:
    def read(path: Path) -> list[dict[str, str]]:
        with open(path, newline="") as handle:
            return [{key: value for key, value in row.items() if key not in TIMING_COLUMNS}
                    for row in csv.DictReader(handle)]

    old, new = read(before), read(after)
    if len(old) != len(new):
        return [f"{len(old)} rows before, {len(new)} after"]
    if old and list(old[0]) != list(new[0]):
        return [f"columns {list(old[0])} before, {list(new[0])} after"]
    differing: dict[str, int] = {}
    for first, second in zip(old, new, strict=True):
        for column, value in first.items():
            if second[column] != value:
                differing[column] = differing.get(column, 0) + 1
    return [f"column {column}: {count} of {len(old)} rows differ"
            for column, count in differing.items()]


def _json_differences(old: Any, new: Any, where: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in sorted(set(old) | set(new)):
            if key in TIMING_KEYS:
                continue
            if key not in old or key not in new:
                found.append(f"{where}/{key}: only {'after' if key in new else 'before'}")
            else:
                found += _json_differences(old[key], new[key], f"{where}/{key}")
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        return [difference for index, (a, b) in enumerate(zip(old, new, strict=True))
                for difference in _json_differences(a, b, f"{where}/{index}")]
    if isinstance(old, torch.Tensor) and isinstance(new, torch.Tensor):
        same = old.shape == new.shape and old.dtype == new.dtype and torch.equal(old, new)
        return [] if same else [f"{where}: the tensors differ"]
    return [] if old == new else [f"{where}: {old!r} before, {new!r} after"]


def compare(before: Path, after: Path) -> list[str]:
    """Every difference between the run directories ``before`` and ``after``."""
    old, new = _files(before), _files(after)
    found = [f"only in {before}: {name}" for name in sorted(old - new)]
    found += [f"only in {after}: {name}" for name in sorted(new - old)]
    for name in sorted(old & new):
        suffix = Path(name).suffix
        if suffix == ".csv":
            differences = _csv_differences(before / name, after / name)
        elif suffix == ".json":
            differences = _json_differences(json.loads((before / name).read_text()),
                                            json.loads((after / name).read_text()))
        elif suffix == ".pt":
            differences = _json_differences(torch.load(before / name, weights_only=False),
                                            torch.load(after / name, weights_only=False))
        else:
            same = (before / name).read_bytes() == (after / name).read_bytes()
            differences = [] if same else ["the bytes differ"]
        found += [f"{name}: {difference}" for difference in differences]
    return found


def main(arguments: list[str]) -> int:
    if not arguments or len(arguments) % 2:
        print(__doc__, file=sys.stderr)
        return 2
    status = 0
    for before, after in zip(arguments[::2], arguments[1::2], strict=True):
        differences = compare(Path(before), Path(after))
        compared = len(_files(Path(before)) & _files(Path(after)))
        print(f"{before} vs {after}: {compared} files compared, "
              f"{len(differences) or 'no'} differences")
        for difference in differences:
            print(f"  {difference}")
        status = status or int(bool(differences))
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
