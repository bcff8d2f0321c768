"""One PGD step against a forward+backward pass of the same batch, and their peak memory.

Model: the StridedCNN 16/32/100 of the shipped ``trades`` branch (configs/mnist-compose.yaml),
random weights (the cost of a step does not depend on them), a batch of 100 MNIST test images,
eps∞ 0.1; one thread. A PGD step is timed as (PGD of 11 steps − PGD of 1 step) / 10, so that
the random start and the final evaluation are not counted (PGD refuses 0 steps), and also as
PGD(11) / 11.

    .venv/bin/python benchmarks/attacks.py
"""

from __future__ import annotations

import statistics

import torch
import torch.nn.functional as F
from support.harness import REPEATS, interleaved, mnist, print_peak_memory, start, table

from robustgate.attacks import PGD
from robustgate.models import StridedCNN
from robustgate.threat import ThreatModel

THREAT = ThreatModel("linf", 0.1)


def main() -> None:
    start("attacks: a PGD step against a forward+backward pass")
    x, _, source = mnist("test", 100)
    model = StridedCNN(channels=(16, 32), hidden=100).eval()
    with torch.no_grad():
        target = model(x).argmax(dim=1)
    print(f"model StridedCNN 16/32/100 (random weights), batch {len(x)} of {source}")

    def forward_backward():
        point = x.clone().requires_grad_(True)
        loss = F.cross_entropy(model(point), target)
        return torch.autograd.grad(loss, point)

    cases = {"forward+backward": forward_backward,
             "PGD 11 steps": lambda: PGD(steps=11, seed=0)(model, x, target, THREAT),
             "PGD 1 step": lambda: PGD(steps=1, seed=0)(model, x, target, THREAT)}
    times = interleaved(cases, repeats=max(REPEATS, 10))  # cheap cases: more rounds
    table(times, "forward+backward")
    steps = [(eleven - one) / 10 for eleven, one in zip(times["PGD 11 steps"],
                                                        times["PGD 1 step"], strict=True)]
    base = times["forward+backward"]
    print(f"one PGD step ((PGD 11 - PGD 1) / 10): {min(steps) / min(base):.2f} / "
          f"{statistics.median(steps) / statistics.median(base):.2f}x a forward+backward pass "
          f"(min / median); PGD(11) / 11: "
          f"{min(times['PGD 11 steps']) / 11 / min(base):.2f} / "
          f"{statistics.median(times['PGD 11 steps']) / 11 / statistics.median(base):.2f}x")
    print_peak_memory(cases)


if __name__ == "__main__":
    main()
