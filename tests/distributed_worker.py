"""A robustgate command as one process of a test's torchrun run (or as the only process): a rank
other than 0 refuses to write any file but its own shard of a per-sample table, and
``ROBUSTGATE_TEST_INTERRUPT_AFTER=K`` stops training right after epoch K is saved, as a run
killed mid-way (``ROBUSTGATE_TEST_SHARD_LOG=FILE``: the shards such a rank writes, and the
search candidates it trains, noted in FILE).

    torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py train CONFIG --out DIR
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import types
from pathlib import Path

import pytest
from conftest import interrupt_training_after

import robustgate.io
import robustgate.pipeline.search
from robustgate.cli import main
from robustgate.distributed import current

INTERRUPT_AFTER = "ROBUSTGATE_TEST_INTERRUPT_AFTER"
SHARD_LOG = "ROBUSTGATE_TEST_SHARD_LOG"  # where a rank other than 0 notes each shard it writes
TRAIN_CANDIDATE = robustgate.pipeline.search.train_model


def noted_training(spec: object, train: object, validation: object, num_classes: int,
                   out: Path, **options: object) -> Path:
    """A search candidate's ``train_model`` on a rank other than 0, noted in the shard log."""
    with open(os.environ[SHARD_LOG], "a") as log:
        log.write(f"{current().rank} trains {out}\n")
    return TRAIN_CANDIDATE(spec, train, validation, num_classes, out, **options)


def refuse_to_write(*args: object, prefix: str = "", dir: str | Path | None = None,
                    **kwargs: object) -> tuple[int, str]:
    """``tempfile.mkstemp`` for this rank's shard files (``runner.shard_path``); an error for
    any other file."""
    own_shard = rf"\..*\.shard-{current().rank}-of-{current().world_size}\.partial\.csv\."
    if re.fullmatch(own_shard, prefix):
        if SHARD_LOG in os.environ:
            with open(os.environ[SHARD_LOG], "a") as log:
                log.write(f"{current().rank} {Path(dir or '.') / prefix}\n")
        return tempfile.mkstemp(*args, prefix=prefix, dir=dir, **kwargs)
    raise AssertionError(f"rank {current().rank} began writing {prefix!r} in {dir}: only "
                         "rank 0 writes, and each rank its own shard")


if __name__ == "__main__":
    monkeypatch = pytest.MonkeyPatch()
    if not current().is_main:  # every file robustgate writes goes through io.atomic_write
        monkeypatch.setattr(robustgate.io, "tempfile",
                            types.SimpleNamespace(mkstemp=refuse_to_write))
        if SHARD_LOG in os.environ:
            monkeypatch.setattr(robustgate.pipeline.search, "train_model", noted_training)
    if INTERRUPT_AFTER in os.environ:
        interrupt_training_after(monkeypatch, int(os.environ[INTERRUPT_AFTER]))
    sys.exit(main(sys.argv[1:]))
