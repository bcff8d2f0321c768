"""Atomic writes (a temporary file beside the target, then a rename), output checks, and progress
lines."""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(temporary_path)`` and rename the result onto ``path``; on failure the old
    ``path`` is left as it was. The file gets the usual permissions (``0o666`` less the umask),
    not the owner-only ones of a temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix,
                                             dir=path.parent)
    os.close(descriptor)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda temporary: temporary.write_text(text))


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def check_output_directory(path: str | Path, option: str = "--out") -> Path:
    """Refuse, before anything is written, an output directory that cannot be one: an existing
    file, or a directory (or, where it does not exist yet, its nearest existing parent) that is
    not a writable directory."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} is an existing file; give a directory (new or one "
                         "written by an earlier run)")
    existing = next(parent for parent in (path, *path.absolute().parents) if parent.exists())
    if not existing.is_dir():
        raise ValueError(f"{option} {path}: {existing} is a file, so no directory can be made "
                         "there; give another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path}: {existing} is not writable; give a directory you "
                         "can write to")
    return path


# what to do where a directory holds results made with other settings (the usual remedy)
ANOTHER_OUT = "choose another --out or remove it"


def check_settings(path: str | Path, settings: dict[str, Any], what: str,
                   remedy: str = ANOTHER_OUT) -> None:
    """Refuse where ``path`` holds other settings than ``settings`` (``what`` names the results
    kept beside them), naming each setting that differs, its stored value and its new one."""
    path = Path(path)
    if not path.exists():
        return
    stored, new = json.loads(path.read_text()), json.loads(json.dumps(settings))
    if stored == new:
        return
    if isinstance(stored, dict):
        differences = "; ".join(
            f"{key}: {stored.get(key, '(not set)')} there, {new.get(key, '(not set)')} now"
            for key in sorted(set(stored) | set(new))
            if (key in stored, stored.get(key)) != (key in new, new.get(key)))
    else:
        differences = f"{stored!r} there"
    raise ValueError(f"{path.parent} holds {what} made with other settings ({path}: "
                     f"{differences}); {remedy}")


def record_settings(path: str | Path, settings: dict[str, Any], what: str,
                    remedy: str = ANOTHER_OUT) -> None:
    """Write ``settings`` to ``path``, or, where ``path`` holds other settings, refuse (``what``
    names the results kept beside them, ``remedy`` what to do), so that nothing written with
    other settings is lost or mixed with new results."""
    check_settings(path, settings, what, remedy)
    atomic_write_json(path, settings)


def file_name(label: str) -> str:
    """A label as a file name: ``era→core [gate]`` → ``era-core-gate``."""
    return re.sub(r"[^A-Za-z0-9_.]+", "-", label).strip("-")


def say(message: str, progress: bool) -> None:
    """A progress line on standard error, unless progress is off."""
    if progress:
        print(message, file=sys.stderr, flush=True)
