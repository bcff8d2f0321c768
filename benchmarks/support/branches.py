"""Reduced versions of the branches the shipped MNIST configs train, trained here briefly (Adam,
``briefly_trained``) on the first MNIST training images and kept under ``runs/bench-branches``
so that the benchmarks that share them train them once. Their architectures are the shipped
ones; their training is a few hundred steps instead of the configs' epochs, so their robustness
(and so how much a certificate or the attack costs on them) is that of short-trained models.

- ``core``: SmallCNN 16/32/100, standard (configs/mnist-compose.yaml ``core``)
- ``trades``: StridedCNN 16/32/100, TRADES at eps∞ 0.3 (``trades``)
- ``era``: ``trades`` fine-tuned by ERA at eps∞ 0.1 (``era``)
- ``ibp``: StridedCNN 32/64/200, IBP at eps∞ 0.2 (configs/mnist-bounds.yaml ``ibp``)
- ``gauss_050``: SmallCNN 16/32/100, Gaussian noise at σ 0.5 (configs/mnist-certified.yaml)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch
from support.harness import briefly_trained, mnist
from torch import nn

from robustgate.models import SmallCNN, StridedCNN, load_checkpoint

CACHE = Path(os.environ.get("ROBUSTGATE_BENCH_BRANCHES",
                            Path(__file__).resolve().parents[2] / "runs" / "bench-branches"))
TRAINING_IMAGES = 10_000


def _recipes() -> dict[str, tuple[str, Callable[[], nn.Module], dict[str, object]]]:
    """Per branch: what it starts from (an architecture, or another branch), and its training."""
    return {
        "core": ("SmallCNN 16/32/100, standard, 400 steps",
                 lambda: SmallCNN(channels=(16, 32), hidden=100),
                 {"loss_name": "standard", "steps": 400}),
        "trades": ("StridedCNN 16/32/100, TRADES eps 0.3 (beta 60), 300 steps",
                   lambda: StridedCNN(channels=(16, 32), hidden=100),
                   {"loss_name": "trades", "steps": 300, "eps": 0.3, "beta_trades": 60.0}),
        "era": ("trades + ERA eps 0.1, 100 steps", lambda: branch("trades"),
                {"loss_name": "era", "steps": 100, "eps": 0.1, "beta": 1.0,
                 "beta_trades": 60.0}),
        "ibp": ("StridedCNN 32/64/200, IBP eps 0.2 (ramped over the first half), 400 steps",
                lambda: StridedCNN(channels=(32, 64), hidden=200),
                {"loss_name": "ibp", "steps": 400, "eps": 0.2, "warmup_epochs": 0.1,
                 "ramp_epochs": 0.9}),
        "gauss_050": ("SmallCNN 16/32/100, Gaussian noise sigma 0.5, 400 steps",
                      lambda: SmallCNN(channels=(16, 32), hidden=100),
                      {"loss_name": "gaussian", "steps": 400, "sigma_train": 0.5}),
    }


def describe(name: str) -> str:
    return f"{name}: {_recipes()[name][0]} (reduced, trained by the benchmark)"


def branch(name: str) -> nn.Module:
    """The reduced branch ``name``, trained on first use, in eval mode."""
    _, build, training = _recipes()[name]
    model = build()
    path = CACHE / f"{name}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path))
        return model.eval()
    x, y, _ = mnist("train", TRAINING_IMAGES)
    torch.manual_seed(0)
    print(f"training {describe(name)}", flush=True)
    model = briefly_trained(model, x=x, y=y, **training)  # type: ignore[arg-type]
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def branch_or_checkpoint(name: str, variable: str) -> tuple[nn.Module, str]:
    """The checkpoint the environment variable ``variable`` names (a fully trained branch, e.g.
    the ``name`` model of a run of its shipped config), else the reduced branch ``name``; with
    its description, in eval mode."""
    checkpoint = os.environ.get(variable)
    if checkpoint is None:
        return branch(name), describe(name)
    model = load_checkpoint(checkpoint, "cpu", trust_code=True)[0].eval()
    return model, f"{name}: checkpoint {checkpoint} (fully trained, from {variable})"
