"""``Smooth.certify`` against plain forward passes over the same number of noisy inputs, at the
noise batch of 1,000 (the default) and 400 (the shipped configs'), and their peak memory.

Model: the SmallCNN 16/32/100 of the shipped ``gauss_050`` model (configs/mnist-certified.yaml),
random weights (the cost does not depend on them), σ = 0.5, 10 MNIST test images, n0 = 100,
n = 2,000, α = 0.001; one thread. The plain passes run the base model on 10 × 2,100 noisy
inputs drawn beforehand, in batches of the same size.

    .venv/bin/python benchmarks/smoothing.py
"""

from __future__ import annotations

import torch
from support.harness import interleaved, mnist, print_peak_memory, start, table

from robustgate.certify import Smooth
from robustgate.models import SmallCNN

SIGMA, N0, N, ALPHA = 0.5, 100, 2_000, 0.001


def main() -> None:
    start("smoothing: Smooth.certify against plain forward passes over the same noisy inputs")
    x, _, source = mnist("test", 10)
    base = SmallCNN(channels=(16, 32), hidden=100).eval()
    print(f"model SmallCNN 16/32/100 (random weights), {len(x)} images of {source}, "
          f"sigma {SIGMA}, n0 {N0}, n {N}")
    noisy = (x.repeat_interleave(N0 + N, dim=0)
             + SIGMA * torch.randn(len(x) * (N0 + N), *x.shape[1:]))
    cases = {}
    for batch_size in (1000, 400):
        smooth = Smooth(base, 10, SIGMA, batch_size=batch_size)

        def plain(batch_size: int = batch_size) -> None:
            with torch.no_grad():
                for first in range(0, len(noisy), batch_size):
                    base(noisy[first:first + batch_size])

        cases[f"forward passes, batch {batch_size}"] = plain
        cases[f"certify, noise batch {batch_size}"] = (
            lambda smooth=smooth: smooth.certify(x, N0, N, ALPHA))
    times = interleaved(cases)
    table(times, "forward passes, batch 1000")
    print_peak_memory(cases)


if __name__ == "__main__":
    main()
