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
from support.harness import briefly_trained, conditions, interleaved, mnist, peak_mib, start, table

from robustgate.certify import (
    certify_bounds,
    feed_forward_layers,
    interval_bounds,
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


def certify_cases(model: torch.nn.Module, x: torch.Tensor) -> dict[str, object]:
    """Every method, old and new, on ``x``, with the forward pass and interval_bounds alone."""
    layers = feed_forward_layers(model)
    with torch.no_grad():
        specification = margin_specification(model(x).argmax(dim=1), 10)

    def new(method: str):
        return lambda: certify_bounds(model, x, THREAT, method)

    def reference(method: str, **settings: int):
        return lambda: old.certify_bounds(model, x, THREAT, method, **settings)

    def forward():
        with torch.no_grad():
            return model(x)

    def intervals():
        with torch.no_grad():
            return interval_bounds(layers, x, THREAT, specification)

    def old_intervals():
        with torch.no_grad():
            return old.interval_bounds(layers, x, THREAT, specification)

    return {"forward": forward, "interval_bounds": intervals,
            "interval_bounds old": old_intervals,
            "certify ibp": new("ibp"), "certify ibp old": reference("ibp"),
            "certify crown-ibp": new("crown-ibp"),
            "certify crown-ibp old": reference("crown", crown_neurons=0),
            "certify crown": new("crown"), "certify crown old": reference("crown")}


def agreement(model: torch.nn.Module, x: torch.Tensor) -> None:
    """The largest difference of the margins, old against new, per method."""
    for method, settings in (("ibp", {}), ("crown-ibp", {"crown_neurons": 0}), ("crown", {})):
        predicted, margin = certify_bounds(model, x, THREAT, method)
        old_predicted, old_margin = old.certify_bounds(
            model, x, THREAT, "crown" if method == "crown-ibp" else method, **settings)
        print(f"  {method:<10} same predictions: {bool(torch.equal(predicted, old_predicted))}, "
              f"max |margin new - old| = {float((margin - old_margin).abs().max()):.2e}, "
              f"certified {int((margin > 0).sum())} of {len(x)}")


def unstable_units(model: torch.nn.Module, x: torch.Tensor) -> str:
    layers = feed_forward_layers(model)
    with torch.no_grad():
        walk, bounds = preactivation_bounds(layers, x, THREAT, crown_neurons=0)
    return ", ".join(
        f"layer {index}: {float(((low < 0) & (high > 0)).flatten(1).sum(1).float().mean()):.0f}"
        f" of {low[0].numel()}" for index, (low, high) in bounds.items())


def per_image(model: torch.nn.Module, images: torch.Tensor) -> None:
    """CROWN's seconds per image at batch 1 and 10 (the first 20 images) and 100 (the first
    100), new and old interleaved."""
    counts = {1: 20, 10: 20, 100: 100}
    cases = {}
    for implementation, module in (("new", None), ("old", old)):
        for size, count in counts.items():
            def run(size: int = size, count: int = count, module: object = module) -> None:
                certify = certify_bounds if module is None else module.certify_bounds
                for first in range(0, count, size):
                    certify(model, images[first:first + size], THREAT, "crown")
            cases[f"crown {implementation} batch {size}"] = run
    times = interleaved(cases)
    print("CROWN per image against the batch size (min / median ms per image):")
    per = {name: [value / counts[int(name.rsplit(" ", 1)[1])] for value in seconds]
           for name, seconds in times.items()}  # seconds per image
    for implementation in ("new", "old"):
        base = per[f"crown {implementation} batch 1"]
        cells = []
        for size in counts:
            seconds = per[f"crown {implementation} batch {size}"]
            cells.append(f"batch {size}: {1000 * min(seconds):.1f} / "
                         f"{1000 * statistics.median(seconds):.1f} "
                         f"({min(seconds) / min(base):.2f} / "
                         f"{statistics.median(seconds) / statistics.median(base):.2f}x batch 1)")
        print(f"  {implementation}: " + "; ".join(cells))
    for size in counts:
        new, old_ = (per[f"crown {name} batch {size}"] for name in ("new", "old"))
        print(f"  batch {size}: new {statistics.median(old_) / statistics.median(new):.2f}x "
              f"faster than old at the median ({min(old_) / min(new):.2f}x at the min)")
    print(f"  ({conditions()})")


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
    batch = test_x[:100]
    for name, model in models.items():
        print(f"\n-- {name}, batch {len(batch)}, eps∞ {THREAT.eps}; unstable units per image "
              f"under IBP: {unstable_units(model, batch)}")
        agreement(model, batch)
        times = interleaved(certify_cases(model, batch))
        table(times, "forward")
        for method in ("interval_bounds", "certify ibp", "certify crown-ibp", "certify crown"):
            old_median = statistics.median(times[f"{method} old"])
            print(f"  {method}: new {old_median / statistics.median(times[method]):.2f}x "
                  f"faster than old at the median "
                  f"({min(times[f'{method} old']) / min(times[method]):.2f}x at the min)")
        per_image(model, test_x)
        print("peak memory added, MiB (batch 100): " + ", ".join(
            f"{case} {peak_mib(call):.0f}" for case, call in certify_cases(model, batch).items()
            if case in ("forward", "certify ibp", "certify crown", "certify crown old")))
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
                         "composed predict": lambda: composed.predict(test_x)})
    table(times, "core forward")
    print(conditions())


if __name__ == "__main__":
    main()
