"""The sequential smoothing selector (``Smooth.decide`` on ``look_schedule(N_max)``) against the
fixed-N selector (CERTIFY with ``n0`` + N draws), side by side in one run: model evaluations per
image, seconds, and the selections that differ.

Model: a reduced ``gauss_050`` (SmallCNN 16/32/100 trained briefly with Gaussian noise at
σ = 0.5 by the benchmark, ``support/branches.py``), or with ``ROBUSTGATE_SEQUENTIAL_CHECKPOINT``
that checkpoint (e.g. the ``gauss_050`` a run of configs/mnist-certified.yaml trained); σ = 0.5,
the selector's L2 radius 0.5 (eps = 0.5, κ = 1), α = 0.001, n0 = 100, N_max = 100,000 (fixed
N = 100,000 the reference, fixed N = 10,000 beside it), noise batch 400, on the first ``IMAGES``
MNIST test images (20 by default: fixed N = 100,000 is 100,100 forward passes per image on this
CPU). Each selector runs once (the model evaluations are counts, not timings). One thread.

    .venv/bin/python benchmarks/sequential_smoothing.py                              # 20 images
    ROBUSTGATE_SEQUENTIAL_IMAGES=100 .venv/bin/python benchmarks/sequential_smoothing.py  # issue's
    ROBUSTGATE_SEQUENTIAL_CHECKPOINT=runs/mnist-certified/models/gauss_050/best.safetensors \
        .venv/bin/python benchmarks/sequential_smoothing.py  # the config's own gauss_050

Every differing selection is explained by the bounds: the fixed-N lower bound at level α and
the sequential test's at level α/K (K looks) on other draws, printed for each.
"""

from __future__ import annotations

import os
import time

from scipy.stats import norm
from support.branches import branch_or_checkpoint
from support.harness import mnist, start

from robustgate.certify import Smooth, look_schedule

IMAGES = int(os.environ.get("ROBUSTGATE_SEQUENTIAL_IMAGES", "20"))
SIGMA, RADIUS, ALPHA, N0, N_MAX, NOISE_BATCH = 0.5, 0.5, 0.001, 100, 100_000, 400


def main() -> None:
    start("sequential smoothing selector against fixed N")
    x, _, source = mnist("test", IMAGES)
    model, description = branch_or_checkpoint("gauss_050", "ROBUSTGATE_SEQUENTIAL_CHECKPOINT")
    smooth = Smooth(model, 10, SIGMA, batch_size=NOISE_BATCH)
    looks = look_schedule(N_MAX)
    print(f"{description}; {len(x)} images of {source}; sigma {SIGMA}, L2 radius "
          f"{RADIUS} (threshold p > {norm.cdf(RADIUS / SIGMA):.4f}), alpha {ALPHA}, n0 {N0}, "
          f"looks {looks}, noise batch {NOISE_BATCH}")
    started = time.perf_counter()
    sequential, _, draws = smooth.decide(x, RADIUS, N0, looks, ALPHA, seed=1)
    seconds = {"sequential": time.perf_counter() - started}
    evaluations = {"sequential": float(draws.double().mean())}
    selected, p_lower = {}, {}
    for n in (10_000, N_MAX):
        started = time.perf_counter()
        predictions, radii, lower = smooth.certify(x, N0, n, ALPHA, seed=2)
        name = f"fixed N={n}"
        seconds[name] = time.perf_counter() - started
        evaluations[name] = float(N0 + n)
        selected[name], p_lower[name] = (predictions >= 0) & (radii >= RADIUS), lower
    reference = f"fixed N={N_MAX}"
    print(f"{'selector':<16}  {'evaluations/image':>17}  {'vs reference':>12}  {'s/image':>8}  "
          f"{'selected':>8}  identical to fixed N={N_MAX}")
    for name in ("sequential", "fixed N=10000", reference):
        chosen = sequential if name == "sequential" else selected[name]
        same = float((chosen == selected[reference]).double().mean())
        print(f"{name:<16}  {evaluations[name]:17.0f}  "
              f"{evaluations[reference] / evaluations[name]:11.1f}x  "
              f"{seconds[name] / len(x):8.3f}  {int(chosen.sum()):8d}  {100 * same:.1f}%")
    for index in (sequential != selected[reference]).nonzero().flatten().tolist():
        print(f"  image {index}: sequential {bool(sequential[index])} after {int(draws[index])} "
              f"draws; fixed N={N_MAX} lower bound {float(p_lower[reference][index]):.5f}, "
              f"N=10000 {float(p_lower['fixed N=10000'][index]):.5f} against the threshold")
    print(f"draws per image of the sequential selector: {sorted(draws.tolist())}")


if __name__ == "__main__":
    main()
