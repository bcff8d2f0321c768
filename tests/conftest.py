"""Shared test helpers: linear classifiers, whose exact robustness radius is known; runs
interrupted at a chosen point; a checkpoint's weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from robustgate.models import load_checkpoint
from robustgate.train import run as training_run


class Linear(nn.Module):
    """``f(x) = W x + b`` with the attributes robustgate models expose."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.linear = nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.linear.weight.copy_(weight)
            self.linear.bias.copy_(bias)
        self.input_shape = (weight.shape[1],)
        self.num_classes = weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def random_linear(num_classes: int, dim: int, seed: int) -> Linear:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(num_classes, dim, generator=generator)
    bias = -weight.sum(dim=1) * 0.5 + 0.1 * torch.randn(num_classes, generator=generator)
    return Linear(weight, bias)


def exact_radius(model: Linear, x: torch.Tensor, norm: str) -> torch.Tensor:
    """Distance to the decision boundary of a linear classifier (no domain constraint):
    ``min_j (f_ŷ − f_j) / ||w_ŷ − w_j||_dual``, the dual of linf being l1 and of l2 itself."""
    weight, bias = model.linear.weight.detach(), model.linear.bias.detach()
    logits = x @ weight.T + bias
    predicted = logits.argmax(dim=1)
    margins = logits.gather(1, predicted.view(-1, 1)) - logits
    differences = weight[predicted].unsqueeze(1) - weight.unsqueeze(0)
    dual = differences.abs().sum(dim=2) if norm == "linf" else differences.norm(dim=2)
    ratios = margins / dual.clamp_min(1e-12)
    ratios[torch.arange(len(x)), predicted] = torch.inf
    return ratios.min(dim=1).values


def interrupt_at_call(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, call: int
                      ) -> list[Any]:
    """Replace ``owner.name`` by a function that raises ``KeyboardInterrupt`` on its ``call``-th
    call (1-based) and passes the others through; returns the first argument of every call."""
    real = getattr(owner, name)
    calls: list[Any] = []

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        calls.append(args[0])
        if len(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, interrupted)
    return calls


def interrupt_training_after(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """Make ``train_model``'s loop raise ``KeyboardInterrupt`` right after epoch ``epoch`` is
    saved (its ``on_epoch_end``)."""
    real_fit = training_run.fit

    def interrupted_fit(*args: Any, on_epoch_end: Any, **kwargs: Any) -> Any:
        def stop_after(done: int, entry: Any, optimizer: Any) -> None:
            on_epoch_end(done, entry, optimizer)
            if done == epoch:
                raise KeyboardInterrupt
        return real_fit(*args, on_epoch_end=stop_after, **kwargs)

    monkeypatch.setattr(training_run, "fit", interrupted_fit)


def checkpoint_weights(path: str | Path) -> torch.Tensor:
    """Every parameter of a checkpoint's model, flattened into one vector."""
    model, _ = load_checkpoint(path)
    return torch.cat([p.flatten() for p in model.parameters()])


def without_seconds(path: Path) -> list[str]:
    """The lines of a per-sample table without its timing column (``seconds``, last)."""
    lines = path.read_text().splitlines()
    if lines[0].endswith(",seconds"):
        return [line.rsplit(",", 1)[0] for line in lines]
    return lines


def without_decision_regions(run: Path) -> Path:
    """``run``, created with a file in place of its decision regions, which an experiment then
    keeps as drawn (a finished output is not redone) instead of drawing them: a robustness check
    on each point of a 200 × 200 grid, for tests that are not about the regions."""
    run.mkdir(parents=True, exist_ok=True)
    (run / "decision_regions.png").write_bytes(b"")
    return run
