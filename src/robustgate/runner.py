"""The one resumable runner behind every per-sample computation (attack records, smoothing and
bound certificates): chunk by chunk, with progress, resumable from partial files, and sharded
across the processes of a ``torchrun`` world.

Rank ``r`` of ``w`` computes every ``w``-th whole chunk of one grid, from chunk ``r`` on
(``shard_indices``; interleaved as ``DistributedSampler`` interleaves, so that data sorted by
class, whose classes cost unequally, still splits evenly), and rewrites its shard file
``<name>.shard-<r>-of-<w>.partial.csv``
(``<name>.partial.csv`` in one process) after every chunk; once every shard is complete, rank 0
merges them into the complete table in sample order and removes the partial files while the others
wait. A rerun picks up the rows of every partial file beside the table, whatever world size wrote
it, so a run resumes also with another number of processes. Computations must draw their randomness
per input (from a seed and the input's index) so that a row does not depend on its chunk or shard.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from robustgate.distributed import Crew, Process, barrier
from robustgate.table import Schema, Table, canonical_radius, concatenate, read_table

Compute = Callable[[np.ndarray], Table]
"""``compute(indices) -> table`` of the samples ``indices`` (global, increasing)."""
Check = Callable[[Table, str], None]
"""``check(table, source)`` refuses, naming ``source``, rows of other data or settings."""


def input_seed(seed: int, index: int, *more: int) -> int:
    """The seed of the random choices a computation makes for the input ``index`` (and ``more``:
    which of its draws), from ``seed``: the same whatever batch, chunk or shard holds it."""
    return int(np.random.SeedSequence(seed, spawn_key=(index, *more)).generate_state(1)[0])


def contiguous_runs(indices: np.ndarray) -> list[np.ndarray]:
    """``indices`` (increasing) split into runs of consecutive ones, for computations that take
    a block of a data set from an offset."""
    return np.split(indices, np.flatnonzero(np.diff(indices) != 1) + 1)


def shard_indices(total: int, chunk: int, rank: int, world_size: int) -> np.ndarray:
    """The samples among ``total`` that ``rank`` computes, increasing: the chunks ``k`` of the
    grid ``[k·chunk, (k+1)·chunk)`` with ``k ≡ rank (mod world_size)``. Whole chunks, so that
    every input is computed in the same batch whatever the world size (the floating-point sums
    of a batched computation can depend on the batch's size)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need world_size >= 1 and 0 <= rank < world_size, got {rank=}, "
                         f"{world_size=}")
    indices = np.arange(total)
    return indices[(indices // chunk) % world_size == rank]


def shard_path(path: Path, rank: int, world_size: int) -> Path:
    """Where ``rank`` keeps its part of the table ``path`` while it computes."""
    if world_size == 1:
        return path.with_suffix(".partial.csv")
    return path.with_suffix(f".shard-{rank}-of-{world_size}.partial.csv")


def partial_paths(path: Path) -> list[Path]:
    """Every partial file of the table ``path``, of any world size."""
    single = path.with_suffix(".partial.csv")
    shards = sorted(path.parent.glob(f"{path.with_suffix('').name}.shard-*-of-*.partial.csv"))
    return [single, *shards] if single.exists() else shards


@dataclass
class PerSampleTask:
    """``compute(*arguments, **options)`` (a function taking ``rank``, ``world_size`` and
    ``progress``, such as ``evaluate_or_resume``) as a task a ``distributed.Crew`` hands to every
    rank: each computes its shard (progress shown on rank 0); rank 0 gets the result, the other
    ranks ``None``."""

    compute: Callable[..., Any]
    arguments: tuple[Any, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)

    def __call__(self, process: Process) -> Any:
        options = {**self.options, "rank": process.rank, "world_size": process.world_size,
                   "progress": self.options.get("progress", True) and process.is_main}
        result = self.compute(*self.arguments, **options)
        return result if process.is_main else None


def shared(crew: Crew, compute: Callable[..., Any], *arguments: Any, **options: Any) -> Any:
    """``compute(*arguments, **options)`` as a :class:`PerSampleTask` on every rank of ``crew``
    (each its shard; in one process, the whole); rank 0's result."""
    return crew.share(PerSampleTask(compute, arguments, options))[0]


def run_per_sample(
    schema: Schema, compute: Compute, total: int, chunk: int, radii: Sequence[float] = (),
    path: str | Path | None = None, check: Check | None = None, progress: bool = True,
    description: str = "", rank: int = 0, world_size: int = 1,
) -> Table:
    """The table of ``schema`` of all ``total`` samples, ``compute``d ``chunk`` samples at a
    time (``radii``: those of its per-radius columns).

    Without ``path`` it is computed in memory. With it, a complete table there is read back
    (``check`` refuses one of other data or settings); else this process computes its shard
    (``rank`` of ``world_size``), resuming from the rows of the partial files beside ``path``,
    and every process returns the merged complete table, which is written to ``path``."""
    if total < 1 or chunk < 1:
        raise ValueError(f"need at least one sample and a chunk of at least one, got "
                         f"{total=}, {chunk=}")
    mine = shard_indices(total, chunk, rank, world_size)
    if path is None:
        if world_size > 1:
            raise ValueError("a sharded computation needs a path for its shards")
        return _compute(schema, compute, np.arange(total), chunk, radii, None, progress,
                        description, rank)
    path = Path(path)
    if path.exists():
        return _read_checked(path, schema, check, total)
    known = _known_rows(path, schema, check, mine, radii)
    if world_size > 1:  # every rank has read the partial files before any rewrites its own
        barrier()
    missing = mine[~np.isin(mine, known.index)]
    computed = _compute(schema, compute, missing, chunk, radii, known,
                        progress, description, rank, shard_path(path, rank, world_size))
    if world_size == 1:
        computed.write(path)
    else:
        computed.write(shard_path(path, rank, world_size))
        barrier()
        if rank == 0:
            _merge(path, schema, world_size, total, chunk, radii)
        barrier()
    for partial in partial_paths(path) if rank == 0 else ():
        partial.unlink(missing_ok=True)
    return computed if world_size == 1 else _read_checked(path, schema, check, total)


def _compute(schema: Schema, compute: Compute, indices: np.ndarray, chunk: int,
             radii: Sequence[float], known: Table | None, progress: bool, description: str,
             rank: int, partial: Path | None = None) -> Table:
    parts = [] if known is None else [known]
    done = len(known) if known is not None else 0
    with tqdm(total=done + len(indices), initial=done, desc=description, disable=not progress,
              leave=False, unit="sample", position=rank) as bar:
        for grid_chunk in np.unique(indices // chunk):
            block = indices[indices // chunk == grid_chunk]
            parts.append(compute(block))
            if partial is not None:
                concatenate(schema, parts, radii).write(partial)
            bar.update(len(block))
    return concatenate(schema, parts, radii)


def _read_checked(path: Path, schema: Schema, check: Check | None, total: int) -> Table:
    table = read_table(path, schema)
    if len(table) != total:
        raise ValueError(f"{path} holds {len(table)} rows, this computation has {total} "
                         "samples; remove it or choose another output")
    if check is not None:
        check(table, str(path))
    return table


def _known_rows(path: Path, schema: Schema, check: Check | None, wanted: np.ndarray,
                radii: Sequence[float]) -> Table:
    """The rows of the samples ``wanted`` that the partial files beside ``path`` hold (the first
    file's row where several hold one)."""
    found: list[Table] = []
    seen = np.empty(0, dtype=np.int64)
    for partial in partial_paths(path):
        table = read_table(partial, schema, complete=False)
        if table.radii != sorted(map(canonical_radius, radii)):
            raise ValueError(f"{partial} holds rows at the radii {table.radii}, this computation "
                             f"asks for {sorted(radii)}; remove it to start over")
        if check is not None:
            check(table, str(partial))
        taken = np.isin(table.index, wanted) & ~np.isin(table.index, seen)
        found.append(table.rows(taken))
        seen = np.concatenate([seen, table.index[taken]])
    return concatenate(schema, found, radii)


def _merge(path: Path, schema: Schema, world_size: int, total: int, chunk: int,
           radii: Sequence[float]) -> None:
    shards = []
    for rank in range(world_size):
        shard = shard_path(path, rank, world_size)
        table = read_table(shard, schema, complete=False)
        if not np.array_equal(table.index, shard_indices(total, chunk, rank, world_size)):
            raise ValueError(f"{shard} does not hold every row of rank {rank}'s shard (chunks "
                             f"of {chunk}, every {world_size}th); rerun to complete it")
        shards.append(table)
    concatenate(schema, shards, radii).write(path)
