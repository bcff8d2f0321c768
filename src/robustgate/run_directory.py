"""A run directory: it holds the resolved config of its run and refuses another (what every run
of the pipeline and every study shares; above the config schemas, below everything that runs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from robustgate.config import parse_config
from robustgate.io import atomic_write_json, check_settings


def check_run_directory(out: Path, resolved: dict[str, Any], schema: type | None = None,
                        extends: str | None = None) -> dict[str, Any]:
    """Write the resolved config into ``out``, or, if ``out`` holds a run, insist it is the same
    config (so that a rerun resumes, and nothing written by another run is lost). With the
    config's ``schema``, a stored config is re-read with the current schema (defaults of
    settings added since filled in), so that a run started by an earlier release resumes.

    ``extends`` names a list setting that a rerun may extend (a study's problems): the stored
    list and the new one are joined, stored items first, and the joined config is recorded and
    returned; every other setting must still be the same."""
    path = out / "config.json"
    if path.exists():
        stored = recorded = json.loads(path.read_text())
        if extends is not None:
            earlier = stored.get(extends, [])
            joined = earlier + [item for item in resolved[extends] if item not in earlier]
            resolved, stored = {**resolved, extends: joined}, {**stored, extends: joined}
        if stored != json.loads(json.dumps(resolved)) and not _same_after(schema, stored,
                                                                           resolved):
            raise ValueError(
                f"{out} holds a run with a different config ({path}); choose another --out or "
                "remove that directory"
            )
        if stored != recorded:
            atomic_write_json(path, stored)
    else:
        atomic_write_json(path, resolved)
    return resolved


def check_records_check(out: Path, description: str) -> None:
    """Record in ``out`` which check writes its records (``description``, the attack's repr), or,
    where ``out`` holds records already, insist they came from the same check: the config does
    not name the check's code, and a run resumed by a release whose records' check changed would
    otherwise join records of two checks in one table, silently. Where no record is left (the
    remedy of a refusal: the records removed), the new check is recorded."""
    path = out / "records_check.json"
    records = out / "records"
    legacy = out / "records_check.txt"  # where releases before this one recorded it
    if legacy.exists() and not path.exists():
        atomic_write_json(path, {"records_check": legacy.read_text().strip()})
        legacy.unlink()
    if not (records.is_dir() and any(item.is_file() for item in records.rglob("*"))):
        atomic_write_json(path, {"records_check": description})
        return
    if not path.exists():
        raise ValueError(
            f"{records} holds records of a release that did not record its records' check; "
            f"this robustgate's is {description}: remove {records} to recompute them with it, "
            f"or, if they were written by that very check, record it in {path} as "
            '{"records_check": "<that description>"}')
    check_settings(path, {"records_check": description}, "records",
                   f"remove {records} (the records and the adaptive attack's, which ran the "
                   "deployed selectors' check) to recompute them with this release's check, or "
                   "resume with the release that wrote them")


def _same_after(schema: type | None, stored: dict[str, Any], resolved: dict[str, Any]) -> bool:
    if schema is None:
        return False
    try:
        again = json.loads(parse_config(stored, schema).model_dump_json())
    except ValueError:  # not a config of this schema at all
        return False
    return again == json.loads(json.dumps(resolved))
