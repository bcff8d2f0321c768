"""A robustgate command as one process of a test's torchrun run (or as the only process): a rank
other than 0 refuses to write any file, and ``ROBUSTGATE_TEST_INTERRUPT_AFTER=K`` stops training
right after epoch K is saved, as a run killed mid-way.

    torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py train CONFIG --out DIR
"""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path
from typing import NoReturn

import pytest
from conftest import interrupt_training_after

import robustgate.io
from robustgate.cli import main
from robustgate.distributed import current

INTERRUPT_AFTER = "ROBUSTGATE_TEST_INTERRUPT_AFTER"


def refuse_to_write(*args: object, dir: str | Path | None = None, **kwargs: object) -> NoReturn:
    raise AssertionError(f"rank {current().rank} began writing a file in {dir}: only rank 0 "
                         "writes")


if __name__ == "__main__":
    monkeypatch = pytest.MonkeyPatch()
    if not current().is_main:  # every file robustgate writes goes through io.atomic_write
        monkeypatch.setattr(robustgate.io, "tempfile",
                            types.SimpleNamespace(mkstemp=refuse_to_write))
    if INTERRUPT_AFTER in os.environ:
        interrupt_training_after(monkeypatch, int(os.environ[INTERRUPT_AFTER]))
    sys.exit(main(sys.argv[1:]))
