"""One training batch (forward, backward, optimizer step) of every loss against ``standard``, and
its peak memory.

Model: the StridedCNN 16/32/100 of the shipped ``trades`` branch (configs/mnist-compose.yaml),
random weights, a batch of 100 MNIST training images, each loss with its default settings at
eps∞ 0.1 (bound losses past their ramp: the full radius), the noise losses at σ_train 0.5 (``cra``
with the 8 copies of the shipped ``cra_050``); one thread.

    .venv/bin/python benchmarks/losses.py
"""

from __future__ import annotations

import torch
from support.harness import interleaved, mnist, print_peak_memory, start, table

from robustgate.losses import LOSSES, make_loss
from robustgate.models import StridedCNN
from robustgate.threat import ThreatModel

NOISE = {"gaussian": {"sigma_train": 0.5}, "cra": {"sigma_train": 0.5, "copies": 8}}


def main() -> None:
    start("losses: one training batch of every loss against standard")
    x, y, source = mnist("train", 100)
    model = StridedCNN(channels=(16, 32), hidden=100)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    print(f"model StridedCNN 16/32/100 (random weights), batch {len(x)} of {source}")
    cases = {}
    for name in LOSSES:
        loss = make_loss(name, ThreatModel("linf", 0.1), **NOISE.get(name, {}))
        if hasattr(loss, "set_epoch"):
            loss.set_epoch(1e6)

        def step(loss: object = loss) -> None:
            optimizer.zero_grad()
            loss(model, x, y).mean().backward()
            optimizer.step()

        cases[name] = step
    times = interleaved(cases)
    table(times, "standard")
    print_peak_memory(cases)


if __name__ == "__main__":
    main()
