"""Early exit in the robustness check: same decisions, less work.

Runs the robustness check of a trained threegauss MLP with and without early exit, side by
side in one run, and prints the wall-time ratio and whether the decisions agree.

    .venv/bin/python benchmarks/early_exit.py
"""

from __future__ import annotations

import time

import torch

from robustgate.attacks import PGD, check_robustness
from robustgate.data import make_synthetic
from robustgate.losses import make_loss
from robustgate.models import MLP
from robustgate.threat import ThreatModel
from robustgate.train import TrainConfig, fit


def main() -> None:
    x, y, classes = make_synthetic("threegauss", 1000, seed=0)
    torch.manual_seed(0)
    model = MLP(2, classes)
    fit(model, make_loss("standard"), x, y, TrainConfig(epochs=5), progress=False)
    test, _, _ = make_synthetic("threegauss", 4000, seed=0, split="test")
    threat = ThreatModel("linf", 0.1)
    timings, decisions = {}, {}
    for early_exit in (False, True):
        attack = PGD(steps=100, relative_step=0.1, random_start=False, early_exit=early_exit)
        started = time.perf_counter()
        decisions[early_exit] = check_robustness(model, test, threat, attack)[1]
        timings[early_exit] = time.perf_counter() - started
    print(f"full attack   {timings[False]:.2f} s")
    print(f"early exit    {timings[True]:.2f} s")
    print(f"speed-up      {timings[False] / timings[True]:.2f}x")
    print(f"non-robust    {int((~decisions[True]).sum())} of {len(test)}")
    print(f"same decisions: {bool(torch.equal(decisions[False], decisions[True]))}")


if __name__ == "__main__":
    main()
