"""The records' check cross-checked against AutoAttack (standard version) on the first test
points of every attacked model, at every radius its records hold (the selection radius and the
stability radius a count reads alike): where AutoAttack flips an input the records hold robust,
the flip is a witness (not a sampling error) that the check is weaker than AutoAttack there, and
every count that leans on those records may count inputs that are not robust.

Files: ``<directory>/<model>.csv``, the AutoAttack records (resumable).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from robustgate.attacks import make_attack
from robustgate.distributed import ALONE, Crew
from robustgate.evaluate.records import Records, evaluate_or_resume
from robustgate.evaluate.results import AutoAttackCheck
from robustgate.io import say
from robustgate.runner import shared
from robustgate.threat import ThreatModel


def autoattack_check(
    models: dict[str, nn.Module], records: dict[str, Records], x: torch.Tensor, y: torch.Tensor,
    threat: ThreatModel, attack_name: str, limit: int, seed: int, batch_size: int,
    directory: Path, progress: bool, crew: Crew | None = None,
) -> dict[str, AutoAttackCheck]:
    """Robust accuracy at eps by the records' check (of the evaluation attack ``attack_name``)
    and by AutoAttack on the first ``limit`` points of ``(x, y)``, per model of ``models`` (its
    ``records`` on ``(x, y)``), and at every radius of the records the inputs where AutoAttack
    found a flip the records' check missed. Under torchrun every rank of ``crew`` attacks its
    shard."""
    crew = crew or Crew(ALONE)
    count = min(limit, len(y))
    if count == 0:
        return {}
    attack = make_attack("autoattack", seed=seed)
    check = {}
    for name, model in models.items():
        say(f"[{name}] AutoAttack check on {count} test points", progress)
        reference = records[name]
        radii = sorted(reference.robust)
        strong = shared(crew, evaluate_or_resume, directory / f"{name}.csv", model, x[:count],
                        y[:count], threat, radii, attack, batch_size=batch_size,
                        progress=progress, description=f"{name}/autoattack")
        evaluation = float((reference.accurate & reference.robust_at(threat.eps))[:count].mean())
        autoattack = float((strong.accurate & strong.robust_at(threat.eps)).mean())
        check[name] = AutoAttackCheck(
            attack_name, evaluation, autoattack, round(100 * (evaluation - autoattack), 2),
            abs(evaluation - autoattack) <= 0.01, _missed(reference, strong, count, threat.eps),
            {f"{radius:g}": _missed(reference, strong, count, radius) for radius in radii})
    return check


def _missed(reference: Records, strong: Records, count: int, radius: float) -> list[int]:
    """The first ``count`` inputs AutoAttack flipped at ``radius`` (``strong``) that the records'
    check (``reference``) did not; ``radius`` matched as ``robust_at`` matches it, so that a
    radius such as 1/255, read back from the records' header, is found."""
    return np.flatnonzero(reference.robust_at(radius)[:count]
                          & ~strong.robust_at(radius)).tolist()
