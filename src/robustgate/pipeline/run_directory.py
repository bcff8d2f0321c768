"""What every run of the pipeline shares: its run directory, which holds the resolved config and
refuses another, and progress lines."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from robustgate.io import atomic_write_json


def say(message: str, progress: bool) -> None:
    """A progress line on standard error, unless progress is off."""
    if progress:
        print(message, file=sys.stderr, flush=True)


def check_run_directory(out: Path, resolved: dict[str, Any]) -> None:
    """Write the resolved config into ``out``, or, if ``out`` holds a run, insist it is the same
    config (so that a rerun resumes, and nothing written by another run is lost)."""
    path = out / "config.json"
    if path.exists():
        if json.loads(path.read_text()) != json.loads(json.dumps(resolved)):
            raise ValueError(
                f"{out} holds a run with a different config ({path}); choose another --out or "
                "remove that directory"
            )
    else:
        atomic_write_json(path, resolved)
