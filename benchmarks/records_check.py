"""The records' check: its cost and strength, the cheaper check against the strong one
(``attacks.records_check``), with AutoAttack's standard version as the reference.

Model: the StridedCNN 16/32/100 of the shipped ``trades`` branch (configs/mnist-compose.yaml),
briefly trained with TRADES at eps∞ 0.3 on 3,000 MNIST training images; records on the first
100 test images at eps∞ 0.1 and 0.2 (a robustness selector's selection and stability radii at
κ = 1). The cheaper check is the MNIST composition experiment's evaluation attack (margin PGD,
50 steps of 0.1·eps, then the targeted margin towards the 2 likeliest other classes); the strong
one raises it to 2 restarts and a targeted run towards every other class. One run of each (the
attacks are seeded), one thread.

    .venv/bin/python benchmarks/records_check.py
"""

from __future__ import annotations

import time

import numpy as np
from support.harness import briefly_trained, conditions, mnist, start

from robustgate.attacks import build_attack, make_attack, records_check
from robustgate.config import AttackSettings
from robustgate.evaluate import evaluate_model
from robustgate.models import StridedCNN
from robustgate.threat import ThreatModel

RADII = [0.1, 0.2]
CHEAPER = AttackSettings(name="pgd", steps=50, relative_step=0.1, objective="margin",
                         target_classes=2)


def main() -> None:
    start("records check: the cheaper check against the strong one, AutoAttack as reference")
    x_train, y_train, source = mnist("train", 3000)
    model = briefly_trained(StridedCNN(channels=(16, 32), hidden=100), "trades", x_train,
                            y_train, steps=300, eps=0.3, beta_trades=60.0)
    x, y, _ = mnist("test", 100)
    print(f"model StridedCNN 16/32/100, TRADES at 0.3 for 300 steps of 100 images of {source}; "
          f"records on {len(y)} test images at eps {RADII}")
    threat = ThreatModel("linf", RADII[0])
    checks = {
        "cheaper (as configured)": build_attack(CHEAPER, seed=0),
        "strong (records_check)": build_attack(records_check(CHEAPER, "strong", 10), seed=0),
        "AutoAttack (standard)": make_attack("autoattack", seed=0),
    }
    records, seconds = {}, {}
    for name, attack in checks.items():
        started = time.perf_counter()
        records[name] = evaluate_model(model, x, y, threat, RADII, attack, batch_size=100,
                                       progress=False)
        seconds[name] = time.perf_counter() - started
        print(f"  {name}: {attack!r}")
    reference = records["AutoAttack (standard)"]
    base = seconds["cheaper (as configured)"]
    print(f"{'check':<24} {'seconds':>8} {'x cheaper':>9}  "
          + "  ".join(f"robust@{r:g} (missed vs AA)" for r in RADII))
    for name, found in records.items():
        cells = []
        for radius in RADII:
            robust = found.robust_at(radius)
            missed = int(np.sum(robust & ~reference.robust_at(radius)))
            cells.append(f"{int(robust.sum()):>14} ({missed:>3})")
        print(f"{name:<24} {seconds[name]:8.1f} {seconds[name] / base:9.2f}  " + "  ".join(cells))
    print(f"({conditions()})")


if __name__ == "__main__":
    main()
