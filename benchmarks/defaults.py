"""The measured defaults: the noise batch of ``Smooth`` (``smoothing.batch_size``) and the batch
of bound propagation (``bounds.batch_size``), each timed per input at several sizes side by side
in one run; the README states the sizes chosen from it.

Models (random weights: the cost does not depend on them): the SmallCNN 16/32/100 of the
shipped ``gauss_050`` model (configs/mnist-certified.yaml), certified with n0 = 100, n = 2,000
on 10 MNIST test images at σ = 0.5; the StridedCNN 32/64/200 of the shipped ``ibp`` model
(configs/mnist-bounds.yaml) bounded by IBP and CROWN-IBP on 500 test images at eps∞ = 0.1.
One thread.

    .venv/bin/python benchmarks/defaults.py
"""

from __future__ import annotations

from support.harness import interleaved, mnist, start, table

from robustgate.certify import Smooth, certify_bounds
from robustgate.models import SmallCNN, StridedCNN
from robustgate.threat import ThreatModel

NOISE_BATCHES = (100, 200, 400, 1000, 2000)
BOUND_BATCHES = (16, 32, 64, 100, 250, 500)


def main() -> None:
    start("defaults: the noise batch and the bound-propagation batch, per input")
    x, _, source = mnist("test", 500)
    base = SmallCNN(channels=(16, 32), hidden=100).eval()
    images = x[:10]
    print(f"noise batch: SmallCNN 16/32/100, {len(images)} images of {source}, n0 100, "
          "n 2000, sigma 0.5")
    cases = {f"noise batch {size}": (lambda size=size: Smooth(base, 10, 0.5, batch_size=size)
                                     .certify(images, 100, 2_000, 0.001))
             for size in NOISE_BATCHES}
    table(interleaved(cases), f"noise batch {NOISE_BATCHES[-1]}", per=len(images), unit="image")
    branch = StridedCNN(channels=(32, 64), hidden=200).eval()
    threat = ThreatModel("linf", 0.1)
    for method in ("ibp", "crown-ibp"):
        print(f"bound batch: StridedCNN 32/64/200, {len(x)} images, {method}, eps 0.1")

        def bound(size: int, method: str = method) -> None:
            for first in range(0, len(x), size):
                certify_bounds(branch, x[first:first + size], threat, method)

        cases = {f"{method} batch {size}": (lambda size=size: bound(size))
                 for size in BOUND_BATCHES}
        table(interleaved(cases), f"{method} batch {BOUND_BATCHES[-1]}", per=len(x),
              unit="image")


if __name__ == "__main__":
    main()
