"""The deployed composition (``ComposedClassifier.predict``) against the core's forward, for every
selector kind and form, each pair timed side by side in one run on the same images.

Models: reduced versions of the shipped MNIST branches trained here briefly
(``support/branches.py``): the SmallCNN core; the ``trades`` StridedCNN 16/32/100 branch under
the robustness selector (the shipped evaluation attack, ``config.EVALUATION_ATTACK``, at
eps∞ = 0.1), its cascade form (stages chosen on 256 training images the branches were not
trained on), the confidence selectors (softmax response, entropy; threshold 0.9), a learned
gate (a two-class StridedCNN 16/32/100, random weights: its cost does not depend on them) and
the mixing baseline (weight 0.5); the ``ibp`` StridedCNN 32/64/200 branch under the bound
selector by each method; the ``gauss_050`` SmallCNN under the smoothing selector (σ = 0.5, L2
eps = 0.5, n0 = 100, N = 10,000, α = 0.001, noise batch 400) and its sequential form (N_max =
10,000). Images per pair: 500 for the forward-only selectors, 50 for the attack, 20 for CROWN,
5 for smoothing (the first MNIST test images). Batch: all images of a pair at once. One thread.

    .venv/bin/python benchmarks/composition.py
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import torch
from support.branches import TRAINING_IMAGES, branch, describe
from support.harness import interleaved, mnist, start
from torch import nn

from robustgate.attacks import build_attack
from robustgate.certify import Smooth
from robustgate.compose import ComposedClassifier
from robustgate.config import EVALUATION_ATTACK, SmoothingSettings
from robustgate.models import MixedClassifier, StridedCNN, predict_logits
from robustgate.select import (
    BoundSelector,
    Cascade,
    ConfidenceSelector,
    GateSelector,
    RobustnessSelector,
    SmoothingSelector,
    choose_stages,
)
from robustgate.threat import ThreatModel

SMOOTHING = SmoothingSettings(sigma=0.5, n0=100, n=10_000, alpha=0.001, batch_size=400)


def cases() -> dict[str, tuple[int, Callable[[torch.Tensor], object]]]:
    """Per selector kind and form: the images it is timed on and the deployed composition."""
    core, trades, ibp = branch("core"), branch("trades"), branch("ibp")
    threat, attack = ThreatModel("linf", 0.1), build_attack(EVALUATION_ATTACK, seed=0)
    train, _, _ = mnist("train", TRAINING_IMAGES + 256)
    stages = choose_stages(trades, train[TRAINING_IMAGES:], threat, attack).stages
    gate = StridedCNN(channels=(16, 32), hidden=100, num_classes=2).eval()
    smooth = Smooth(branch("gauss_050"), 10, SMOOTHING.sigma,
                    batch_size=SMOOTHING.batch_size)
    mixed = MixedClassifier(core, trades, 0.5).eval()

    def composed(model: nn.Module, selector: object) -> Callable[[torch.Tensor], object]:
        return ComposedClassifier(model, selector, core).predict  # type: ignore[arg-type]

    def smoothing(sequential: bool) -> Callable[[torch.Tensor], object]:
        return composed(smooth, SmoothingSelector(smooth, 0.5, SMOOTHING, seed=0,
                                                  sequential=sequential))

    return {
        "softmax_response": (500, composed(trades, ConfidenceSelector(trades, 0.9))),
        "entropy": (500, composed(trades, ConfidenceSelector(trades, 0.9, "entropy"))),
        "gate": (500, composed(trades, GateSelector(gate))),
        "mixing": (500, lambda x: predict_logits(mixed, x).argmax(1)),
        "bounds: ibp": (500, composed(ibp, BoundSelector(ibp, threat, "ibp"))),
        "bounds: crown-ibp": (500, composed(ibp, BoundSelector(ibp, threat, "crown-ibp"))),
        "bounds: crown": (20, composed(ibp, BoundSelector(ibp, threat, "crown"))),
        "bounds: ibp+crown": (20, composed(ibp, BoundSelector(ibp, threat, "ibp+crown"))),
        "robustness": (50, composed(trades, RobustnessSelector(trades, threat, attack))),
        f"robustness: cascade {list(stages)}": (50, composed(trades, RobustnessSelector(
            trades, threat, Cascade(attack, stages)))),
        "smoothing": (5, smoothing(False)),
        "smoothing: sequential": (5, smoothing(True)),
    }


def main() -> None:
    start("composition: the deployed composition against the core's forward")
    x, _, source = mnist("test", 500)
    print(f"images of {source}; " + "; ".join(describe(name) for name in
                                              ("core", "trades", "ibp", "gauss_050")))
    core = branch("core")
    print(f"{'selector':<40}  {'images':>6}  {'ms/image':>9}  vs core forward (min / median)")
    for name, (count, predict) in cases().items():
        images = x[:count]
        with torch.no_grad():
            times = interleaved({"core": lambda images=images: core(images),
                                 name: lambda images=images, predict=predict: predict(images)})
        low = min(times[name]) / min(times["core"])
        middle = statistics.median(times[name]) / statistics.median(times["core"])
        print(f"{name:<40}  {count:6d}  {1000 * min(times[name]) / count:9.3f}  "
              f"{low:.1f} / {middle:.1f}x", flush=True)


if __name__ == "__main__":
    main()
