"""Bound propagation over traced residual networks on this CPU (one thread):

- ``resnet20``: a ResNet-20 (CIFAR-shaped inputs, random weights in eval mode, random images;
  no CIFAR-10 here) bounded at eps∞ = 1/255 by IBP, CROWN-IBP and CROWN (robustgate's policy:
  CROWN intermediate bounds on ReLUs of at most ``crown_neurons`` units, IBP's on the wider
  ones), time per image against a forward pass; CROWN with the last stage's ReLUs tightened
  (``crown_neurons`` 4096) on ``FULL_CROWN`` image(s), and the unstable units under IBP that
  decide the cost of tightening the others.
- ``mnist``: a small residual CNN (no batch norm) trained with ``ibp`` by Adam on MNIST at the
  training radius 0.15 (ramped over the first half of the steps), then certified by IBP at
  eps∞ = 0.1 on the test set: natural and certified accuracy.

    .venv/bin/python benchmarks/residual_bounds.py resnet20 [IMAGES]
    .venv/bin/python benchmarks/residual_bounds.py mnist [STEPS] [TEST_IMAGES]
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F
from support.harness import briefly_trained, mnist, start
from torch import nn

from robustgate.certify import certify_bounds, preactivation_bounds
from robustgate.models import ResNet
from robustgate.models.cnn import MNIST_MEAN, MNIST_STD
from robustgate.models.normalize import Normalize
from robustgate.threat import ThreatModel

FULL_CROWN = 1


class ResidualCNN(nn.Module):
    """``conv4x4/2 ReLU``, a residual block ``h + conv3x3(ReLU(conv3x3(h)))``, ``ReLU conv4x4/2
    ReLU``, ``linear ReLU linear``: StridedCNN with a residual block, for IBP training."""

    def __init__(self, channels: tuple[int, int] = (16, 32), hidden: int = 100) -> None:
        super().__init__()
        first, second = channels
        self.normalize = Normalize(MNIST_MEAN, MNIST_STD, channels=1)
        self.conv1 = nn.Conv2d(1, first, 4, stride=2, padding=1)
        self.inner = nn.Conv2d(first, first, 3, padding=1)
        self.outer = nn.Conv2d(first, first, 3, padding=1)
        self.conv2 = nn.Conv2d(first, second, 4, stride=2, padding=1)
        self.fc1, self.fc2 = nn.Linear(second * 7 * 7, hidden), nn.Linear(hidden, 10)
        self.num_classes = 10

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(self.normalize(x)))
        h = h + self.outer(F.relu(self.inner(h)))
        h = F.relu(self.conv2(F.relu(h)))
        return self.fc2(F.relu(self.fc1(h.flatten(1))))


def timed(call):
    started = time.perf_counter()
    result = call()
    return result, time.perf_counter() - started


def resnet20(images: int) -> None:
    start("ResNet-20 (3x32x32): IBP and CROWN against a forward pass")
    model = ResNet(depth=20).eval()
    x = torch.rand(images, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    threat = ThreatModel("linf", 1 / 255)
    with torch.no_grad():
        model(x)
        _, forward = timed(lambda: model(x))
    print(f"forward: {1e3 * forward / images:.2f} ms per image (batch {images})")
    for method, neurons, count in (("ibp", 0, images), ("crown-ibp", 0, images),
                                   ("crown", 2048, images), ("crown", 4096, FULL_CROWN)):
        (_, margin), seconds = timed(lambda method=method, neurons=neurons, count=count: (
            certify_bounds(model, x[:count], threat, method, neurons)))
        print(f"{method} (crown_neurons {neurons}) on {count} image(s): "
              f"{1e3 * seconds / count:.1f} ms per image "
              f"({seconds / count / (forward / images):.0f}x the forward pass), median margin "
              f"{margin.median():.3g}")
    with torch.no_grad():
        _, bounds = preactivation_bounds(model, x[:FULL_CROWN], threat, crown_neurons=0)
    unstable = [int(((low < 0) & (high > 0)).sum()) for low, high in bounds.values()]
    print(f"unstable ReLU units under IBP on {FULL_CROWN} image(s), ReLU by ReLU: {unstable}")


def residual_mnist(steps: int, test_images: int) -> None:
    start("a small residual CNN trained with ibp on MNIST, certified at eps 0.1")
    train_x, train_y, source = mnist("train", 60_000)
    test_x, test_y, _ = mnist("test", test_images)
    print(f"data: {source}; {steps} Adam steps of 100 images (training radius 0.15)")
    torch.manual_seed(0)
    model, seconds = timed(lambda: briefly_trained(
        ResidualCNN(), "ibp", train_x, train_y, steps, eps=0.15, warmup_epochs=0.1,
        ramp_epochs=0.9, final_natural_weight=0.5))
    print(f"training: {seconds / 60:.1f} min")
    threat = ThreatModel("linf", 0.1)
    with torch.no_grad():
        natural = (model(test_x).argmax(dim=1) == test_y).float().mean()
    certified = []
    for first in range(0, len(test_x), 500):
        predicted, margin = certify_bounds(model, test_x[first:first + 500], threat, "ibp")
        certified.append((margin > 0) & (predicted == test_y[first:first + 500]))
    print(f"natural accuracy {100 * float(natural):.2f}%, IBP certified accuracy at 0.1 "
          f"{100 * float(torch.cat(certified).float().mean()):.2f}% on {len(test_x)} test "
          "images")


if __name__ == "__main__":
    if sys.argv[1] == "resnet20":
        resnet20(int(sys.argv[2]) if len(sys.argv) > 2 else 100)
    else:
        residual_mnist(int(sys.argv[2]) if len(sys.argv) > 2 else 3000,
                       int(sys.argv[3]) if len(sys.argv) > 3 else 10_000)
