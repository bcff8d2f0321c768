"""Bound propagation against a forward pass, CROWN's cost per image against the batch size, the
new implementation (per-operation rules) against the old one (``support/reference_bounds.py``),
peak memory, and the composition under the IBP bound selector against the core's forward.

Models: StridedCNN 32/64/200 and 16/32/100, briefly trained with IBP on MNIST (training radius
ramped to 0.2 over the first half of ``STEPS`` Adam steps of 100 images; a reduced version of the
shipped ``ibp`` branch of configs/mnist-bounds.yaml), and a SmallCNN 16/32/100 core briefly
trained with ``standard``. Bounds at eps∞ = 0.1 on MNIST test images. One thread.

    .venv/bin/python benchmarks/bounds.py
"""

from __future__ import annotations

import os
import statistics

import torch
from support import reference_bounds as old
from support.harness import (
    REPEATS,
    briefly_trained,
    conditions,
    interleaved,
    mnist,
    print_peak_memory,
    start,
    table,
)

from robustgate.certify import bounds as new_bounds
from robustgate.certify import (
    certify_bounds,
    margin_specification,
    preactivation_bounds,
)
from robustgate.compose import ComposedClassifier
from robustgate.models import SmallCNN, StridedCNN
from robustgate.select import BoundSelector
from robustgate.threat import ThreatModel

STEPS = int(os.environ.get("ROBUSTGATE_BENCH_STEPS", "300"))
THREAT = ThreatModel("linf", 0.1)
IBP_SCHEDULE = {"warmup_epochs": 0.1, "ramp_epochs": 0.9}


SIZES = {1: 20, 10: 20, 100: 100}
"""CROWN per image: batches of 1 and 10 over the first 20 images, of 100 over the first 100."""


OLD_CROWN_LARGEST = {"StridedCNN 32/64/200": 100, "StridedCNN 16/32/100": 10}
"""The largest batch the old CROWN runs at: on the 16/32/100 its 1,568-unit layer gets CROWN
bounds, and at batch 100 it needs about 11 GiB (measured), more than this shared machine
spares."""


def cases(model: torch.nn.Module, images: torch.Tensor, old_largest: int,
          sizes: dict[int, int] | None = None) -> dict[str, object]:
    """At batch 100: the forward pass, interval_bounds alone, and every method old and new;
    CROWN new at each batch size of ``sizes`` (on that many images), old up to
    ``old_largest``."""
    sizes = sizes or SIZES
    x = images[:sizes[100]]
    with torch.no_grad():
        specification = margin_specification(model(x).argmax(dim=1), 10)

    def forward():
        with torch.no_grad():
            return model(x)

    def intervals(module: object = None):
        with torch.no_grad():
            bounded = model if module is None else old.reference_layers(model)
            return (module or new_bounds).interval_bounds(bounded, x, THREAT, specification)

    def certify(method: str, module: object = None, size: int = 100, **settings: int):
        def run() -> None:
            for first in range(0, sizes[size], size):
                (module or new_bounds).certify_bounds(model, images[first:first + size], THREAT,
                                                method, **settings)
        return run

    chosen = {"forward": forward, "interval_bounds": intervals,
              "interval_bounds old": lambda: intervals(old),
              "certify ibp": certify("ibp"), "certify ibp old": certify("ibp", old),
              "certify crown-ibp": certify("crown-ibp"),
              "certify crown-ibp old": certify("crown", old, crown_neurons=0)}
    for size in sizes:
        chosen[f"certify crown batch {size}"] = certify("crown", size=size)
        if size <= old_largest:
            chosen[f"certify crown old batch {size}"] = certify("crown", old, size=size)
    return chosen


def agreement(model: torch.nn.Module, images: torch.Tensor, old_largest: int) -> None:
    """The largest difference of the margins, old against new, per method (CROWN on the first
    ``old_largest`` images)."""
    for method, settings in (("ibp", {}), ("crown-ibp", {"crown_neurons": 0}), ("crown", {})):
        x = images[:old_largest] if method == "crown" else images
        predicted, margin = certify_bounds(model, x, THREAT, method)
        old_predicted, old_margin = old.certify_bounds(
            model, x, THREAT, "crown" if method == "crown-ibp" else method, **settings)
        print(f"  {method:<10} same predictions: {bool(torch.equal(predicted, old_predicted))}, "
              f"max |margin new - old| = {float((margin - old_margin).abs().max()):.2e}, "
              f"certified {int((margin > 0).sum())} of {len(x)}")


def unstable_units(model: torch.nn.Module, x: torch.Tensor) -> str:
    with torch.no_grad():
        walk, bounds = preactivation_bounds(model, x, THREAT, crown_neurons=0)
    return ", ".join(
        f"layer {index}: {float(((low < 0) & (high > 0)).flatten(1).sum(1).float().mean()):.0f}"
        f" of {low[0].numel()}" for index, (low, high) in bounds.items())


def per_image(times: dict[str, list[float]]) -> None:
    """CROWN's seconds per image against the batch size, new and old."""
    per = {size: {name: [value / SIZES[size] for value in times[case]]
                  for name, case in (("new", f"certify crown batch {size}"),
                                     ("old", f"certify crown old batch {size}"))
                  if case in times}
           for size in SIZES}
    print("CROWN per image against the batch size (ms per image, min / median; against batch "
          "1; old against new):")
    for size in SIZES:
        cells = []
        for name in per[size]:
            seconds, base = per[size][name], per[1][name]
            cells.append(f"{name} {1000 * min(seconds):7.1f} / "
                         f"{1000 * statistics.median(seconds):7.1f}"
                         f" ({min(seconds) / min(base):.2f} / "
                         f"{statistics.median(seconds) / statistics.median(base):.2f}x batch 1)")
        new, old_ = per[size]["new"], per[size].get("old")
        faster = (f"; new {min(old_) / min(new):.1f} / "
                  f"{statistics.median(old_) / statistics.median(new):.1f}x faster"
                  if old_ else "; old not run at this batch (OLD_CROWN_LARGEST)")
        print(f"  batch {size:>3}: " + "; ".join(cells) + faster)


def main() -> None:
    start("bounds: IBP, CROWN-IBP and CROWN against a forward pass; old against new")
    train_x, train_y, source = mnist("train", 20_000)
    test_x, _, _ = mnist("test", 500)
    print(f"data: {source}; models briefly trained ({STEPS} steps of 100)")
    models = {}
    for channels, hidden in (((32, 64), 200), ((16, 32), 100)):
        torch.manual_seed(0)
        name = f"StridedCNN {channels[0]}/{channels[1]}/{hidden}"
        models[name] = briefly_trained(StridedCNN(channels=channels, hidden=hidden), "ibp",
                                       train_x, train_y, STEPS, **IBP_SCHEDULE)
    for name, model in models.items():
        print(f"\n-- {name}, batch 100, eps∞ {THREAT.eps}; unstable units per image under IBP: "
              f"{unstable_units(model, test_x[:100])}")
        largest = OLD_CROWN_LARGEST[name]
        agreement(model, test_x[:100], largest)
        chosen = cases(model, test_x, largest)
        for case in cases(model, test_x[:2], 100, {1: 2, 10: 2, 100: 2}).values():
            case()  # the warm-up, on 2 images (the old CROWN takes minutes on 100)
        times = interleaved(chosen, warm_up=False)
        table({case: seconds for case, seconds in times.items()
               if "batch 1" not in case or "batch 100" in case}, "forward")
        for method in ("interval_bounds", "certify ibp", "certify crown-ibp",
                       f"certify crown batch {largest}"):
            old_times = times[method.replace(" batch", " old batch") if "batch" in method
                              else f"{method} old"]
            middle = statistics.median(old_times) / statistics.median(times[method])
            print(f"  {method}: new {middle:.2f}x faster than old at the median "
                  f"({min(old_times) / min(times[method]):.2f}x at the min)")
        per_image(times)
        measured = ("forward", "certify ibp", "certify ibp old", "certify crown batch 100",
                    f"certify crown old batch {largest}")
        print_peak_memory({case: call for case, call in chosen.items() if case in measured},
                          " (batch 100)")
    composition(models["StridedCNN 32/64/200"], train_x, train_y, test_x)


def composition(branch: torch.nn.Module, train_x: torch.Tensor, train_y: torch.Tensor,
                test_x: torch.Tensor) -> None:
    """The deployed composition under the IBP bound selector against the core's forward."""
    torch.manual_seed(0)
    core = briefly_trained(SmallCNN(channels=(16, 32), hidden=100), "standard", train_x,
                           train_y, STEPS)
    composed = ComposedClassifier(branch, BoundSelector(branch, THREAT, "ibp"), core)
    selected = int(composed.predict(test_x)[1].eq(0).sum())
    print(f"\n-- composition: SmallCNN 16/32/100 core, StridedCNN 32/64/200 branch under the IBP "
          f"bound selector at eps∞ {THREAT.eps}, batch {len(test_x)}; the selector selects "
          f"{selected} of {len(test_x)}")

    def core_forward():
        with torch.no_grad():
            return core(test_x)

    times = interleaved({"core forward": core_forward,
                         "composed predict": lambda: composed.predict(test_x)},
                        repeats=max(REPEATS, 10))  # cheap cases: more rounds
    table(times, "core forward")
    print(conditions())


if __name__ == "__main__":
    main()
