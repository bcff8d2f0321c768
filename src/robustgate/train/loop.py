"""Mini-batch SGD over a per-sample loss, with the step schedule of TRADES and a seed."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from robustgate.inputs import check_inputs, check_labels
from robustgate.losses import Loss
from robustgate.models.modes import model_device


@dataclass(frozen=True)
class TrainConfig:
    """SGD with momentum and weight decay; the learning rate is multiplied by
    ``lr_drop_factor`` from epoch ``lr_drop_at · epochs`` on; ``seed`` fixes the batch order."""

    epochs: int = 20
    batch_size: int = 10
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_drop_at: float = 0.75
    lr_drop_factor: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(
                f"epochs and batch_size must be >= 1, got epochs={self.epochs}, "
                f"batch_size={self.batch_size}"
            )
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got lr={self.lr}")
        if not (0 <= self.momentum < 1 and self.weight_decay >= 0):
            raise ValueError(
                f"need 0 <= momentum < 1 and weight_decay >= 0, got momentum={self.momentum}, "
                f"weight_decay={self.weight_decay}"
            )
        if not (0 <= self.lr_drop_at <= 1 and 0 < self.lr_drop_factor <= 1):
            raise ValueError(
                f"need 0 <= lr_drop_at <= 1 and 0 < lr_drop_factor <= 1, got "
                f"lr_drop_at={self.lr_drop_at}, lr_drop_factor={self.lr_drop_factor}"
            )


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based)."""
    dropped = epoch >= config.lr_drop_at * config.epochs
    return config.lr * (config.lr_drop_factor if dropped else 1.0)


def fit(
    model: nn.Module,
    loss: Loss,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    progress: bool = True,
    description: str = "train",
) -> list[dict[str, float]]:
    """Train ``model`` in place on ``(x, y)``; returns one log entry per epoch."""
    check_inputs(x, getattr(model, "input_shape", None))
    check_labels(y, len(x), getattr(model, "num_classes", None))
    device = model_device(model)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    history = []
    epochs = tqdm(range(config.epochs), desc=description, disable=not progress, leave=False)
    for epoch in epochs:
        lr = learning_rate(config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        order = torch.randperm(len(x), generator=generator)
        total, count = 0.0, 0
        for start in range(0, len(x), config.batch_size):
            index = order[start : start + config.batch_size]
            batch_x, batch_y = x[index].to(device), y[index].to(device)
            batch_loss = loss(model, batch_x, batch_y).mean()
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            optimizer.step()
            total += batch_loss.item() * len(index)
            count += len(index)
        history.append({"epoch": epoch + 1, "lr": lr, "loss": total / count})
        epochs.set_postfix(loss=f"{total / count:.4f}")
    model.eval()
    return history
