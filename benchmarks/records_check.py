"""The records' check: its cost and strength, the cheaper check against the strong one
(``attacks.records_check``), with AutoAttack's standard version as the reference.

Models: the shared reduced ``core`` (standard SmallCNN) and ``trades`` (StridedCNN, TRADES at
eps∞ 0.3) of ``support.branches``, or fully trained checkpoints of them
(``ROBUSTGATE_RECORDS_CHECK_CORE``, ``ROBUSTGATE_RECORDS_CHECK_TRADES``: e.g. the ``core`` and
``trades`` models of a run of configs/mnist-compose.yaml). Records on the first
``ROBUSTGATE_RECORDS_CHECK_IMAGES`` (default 200) test images at eps∞ 0.1 and 0.2 (a robustness
selector's selection and stability radii at κ = 1); AutoAttack's standard version checks the
inputs the strong check holds, on the first ``ROBUSTGATE_RECORDS_CHECK_REFERENCE`` (default 50)
of them (its Square takes 5,000 queries on every input that holds). The cheaper check is the
MNIST composition experiment's evaluation attack (margin PGD, 50 steps of 0.1·eps, then the
targeted margin towards the 2 likeliest other classes); the strong one is margin PGD with 2
restarts, then APGD-CE and APGD-T. One run of each (the attacks are seeded); the threads are
PyTorch's default unless ``OMP_NUM_THREADS`` says otherwise.

    .venv/bin/python benchmarks/records_check.py
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
from support.branches import branch_or_checkpoint
from support.harness import conditions, mnist, start

from robustgate.attacks import make_attack, records_check
from robustgate.attacks.registry import build_attack
from robustgate.config import AttackSettings
from robustgate.evaluate import evaluate_model
from robustgate.threat import ThreatModel

RADII = [0.1, 0.2]
IMAGES = int(os.environ.get("ROBUSTGATE_RECORDS_CHECK_IMAGES", "200"))
REFERENCE = int(os.environ.get("ROBUSTGATE_RECORDS_CHECK_REFERENCE", "50"))
CHEAPER = AttackSettings(name="pgd", steps=50, relative_step=0.1, objective="margin",
                         target_classes=2)


def main() -> None:
    start("records check: the cheaper check against the strong one, AutoAttack as reference")
    x, y, source = mnist("test", IMAGES)
    print(f"records on {len(y)} test images of {source} at eps {RADII}; AutoAttack on the "
          f"inputs the strong check holds among the first {REFERENCE}; "
          f"{torch.get_num_threads()} threads")
    for name in ("core", "trades"):
        model, description = branch_or_checkpoint(
            name, f"ROBUSTGATE_RECORDS_CHECK_{name.upper()}")
        compare(model, description, x, y)
    print(f"({conditions()})")


def compare(model: torch.nn.Module, description: str, x: torch.Tensor, y: torch.Tensor) -> None:
    print(description)
    threat = ThreatModel("linf", RADII[0])
    checks = {"cheaper (as configured)": build_attack(CHEAPER, seed=0),
              "strong (records_check)": records_check(CHEAPER, "strong", 10, seed=0)}
    records, seconds = {}, {}
    for name, attack in checks.items():
        started = time.perf_counter()
        records[name] = evaluate_model(model, x, y, threat, RADII, attack, progress=False)
        seconds[name] = time.perf_counter() - started
        print(f"  {name}: {attack!r}")
    strong = records["strong (records_check)"]
    base = seconds["cheaper (as configured)"]
    print(f"  {'check':<24} {'seconds':>8} {'x cheaper':>9}  "
          + "  ".join(f"robust@{radius:g}" for radius in RADII))
    for name, found in records.items():
        print(f"  {name:<24} {seconds[name]:8.1f} {seconds[name] / base:9.2f}  "
              + "  ".join(f"{int(found.robust_at(radius).sum()):>9}" for radius in RADII))
    for radius in RADII:
        cheaper = records["cheaper (as configured)"].robust_at(radius)
        held = strong.robust_at(radius)
        print(f"  at {radius:g}: the cheaper check holds {int(np.sum(cheaper & ~held))} inputs "
              f"the strong one breaks, the strong one {int(np.sum(held & ~cheaper))} the "
              "cheaper one breaks")
        standing = np.flatnonzero(held[:REFERENCE])
        if len(standing) == 0:
            print(f"  at {radius:g}: the strong check holds none of the first {REFERENCE}")
            continue
        started = time.perf_counter()
        reference = evaluate_model(model, x[standing], y[standing],
                                   ThreatModel("linf", radius), [radius],
                                   make_attack("autoattack", seed=0), progress=False)
        missed = standing[~reference.robust_at(radius)]
        print(f"  at {radius:g}: AutoAttack (standard) breaks {len(missed)} of the "
              f"{len(standing)} inputs the strong check holds among the first {REFERENCE} "
              f"(test inputs {missed.tolist()}; {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
