"""Mini-batch SGD over a per-sample loss, with the step schedule of TRADES and a seed; in one
process, or as one rank of a torchrun run (``distributed``).

Under torchrun ``config.batch_size`` is the global batch: every step takes the same batch of the
epoch's permutation as one process would, and each rank computes the loss on its own contiguous
part of it (sizes differing by at most one), the training attack against the unwrapped model.
Each rank's mean loss is scaled by its share of the batch, so that the gradient DDP averages
over ranks is the gradient of the global batch's mean loss."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from robustgate.config import TrainConfig
from robustgate.distributed import ALONE, Process, average_buffers, parallel, sum_over_ranks
from robustgate.inputs import check_inputs, check_labels
from robustgate.losses import Loss
from robustgate.models.modes import model_device


def learning_rate(config: TrainConfig, epoch: int) -> float:
    """The learning rate of ``epoch`` (0-based)."""
    dropped = epoch >= config.lr_drop_at * config.epochs
    return config.lr * (config.lr_drop_factor if dropped else 1.0)


def epoch_seed(config: TrainConfig, epoch: int) -> int:
    """The seed of one epoch's randomness (batch order, attack starts): a resumed run draws
    exactly what an uninterrupted one would."""
    return config.seed * 1_000_003 + epoch


def rank_seed(config: TrainConfig, epoch: int, rank: int) -> int:
    """The seed of one rank's randomness in one epoch (attack starts, noise): the epoch's seed on
    rank 0 (and in one process), other streams on the other ranks."""
    return epoch_seed(config, epoch) + (rank << 32)


def global_batches(count: int, config: TrainConfig, epoch: int) -> list[torch.Tensor]:
    """The batches of one epoch over ``count`` samples: a permutation seeded by the seed and the
    epoch (the same on every rank), cut into batches of ``config.batch_size``."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(
        epoch_seed(config, epoch)))
    return list(order.split(config.batch_size))


def check_batches_divide(count: int, batch_size: int, world_size: int) -> None:
    """Refuse a training set whose batches cannot be shared by ``world_size`` ranks: every rank
    needs a sample of every batch, the last (shorter) one included."""
    last = count % batch_size or batch_size
    if world_size > 1 and min(batch_size, last, count) < world_size:
        raise ValueError(
            f"{world_size} processes cannot share batches of {batch_size} over {count} training "
            f"samples (a batch of {min(batch_size, last, count)}): every rank needs at least one "
            "sample of every batch; batch_size is the global batch, so raise it or change "
            "limit_train")


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The configured optimizer (SGD with momentum, or Adam) over the parameters that require
    gradients (all, or the last layer when frozen)."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters:
        raise ValueError("the model has no trainable parameters")
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay)


EpochCallback = Callable[[int, dict[str, float], torch.optim.Optimizer], None]


class DivergedError(ValueError):
    """The loss or the weights became NaN or infinite; the epoch it happened in was not saved."""


def _check_finite(model: nn.Module, loss: torch.Tensor | None, epoch: int, batch: int,
                  config: TrainConfig) -> None:
    """Raise :class:`DivergedError` naming the (1-based) epoch and batch where the batch
    ``loss`` (before its step) or, without one, a weight or buffer (after the step) is not
    finite."""
    if loss is not None:
        if math.isfinite(float(loss)):
            return
        what = f"the loss is {float(loss)}"
    else:
        broken = [name for name, value in [*model.named_parameters(), *model.named_buffers()]
                  if value.is_floating_point() and not bool(torch.isfinite(value).all())]
        if not broken:
            return
        what = f"weights became non-finite ({', '.join(broken[:3])})"
    raise DivergedError(
        f"training diverged in epoch {epoch}, batch {batch}: {what}, at learning rate "
        f"{learning_rate(config, epoch - 1):g}; lower the learning rate and train again")


def fit(
    model: nn.Module,
    loss: Loss,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    progress: bool = True,
    description: str = "train",
    optimizer: torch.optim.Optimizer | None = None,
    start_epoch: int = 0,
    on_epoch_end: EpochCallback | None = None,
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    process: Process = ALONE,
) -> list[dict[str, float]]:
    """Train ``model`` in place on ``(x, y)`` from ``start_epoch`` on; returns one log entry per
    epoch run. ``on_epoch_end(epoch, entry, optimizer)`` may add to the entry (validation
    metrics) and save state; ``optimizer`` and ``start_epoch`` resume an interrupted run;
    ``augment`` transforms every batch on the device before the loss (seeded by the epoch). A
    non-finite loss or weight stops training with :class:`DivergedError` before the epoch is
    handed to ``on_epoch_end``, so what it saves stays the last good state.

    ``process`` is this rank of a torchrun run (the module docstring); the loss reported and
    checked is the global batch's, and batch-norm running statistics are averaged over ranks at
    every epoch's end (``distributed.average_buffers``) before ``on_epoch_end``."""
    check_inputs(x, getattr(model, "input_shape", None))
    check_labels(y, len(x), getattr(model, "num_classes", None))
    check_batches_divide(len(x), config.batch_size, process.world_size)
    device = model_device(model)
    optimizer = optimizer or make_optimizer(model, config)
    trained = parallel(model, process)
    history = []
    epochs = tqdm(range(start_epoch, config.epochs), desc=description, disable=not progress,
                  leave=False, initial=start_epoch, total=config.epochs)
    forked = [device] if device.type == "cuda" else []
    for epoch in epochs:
        lr = learning_rate(config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        trained.train()
        total, count = 0.0, 0
        with torch.random.fork_rng(devices=forked):
            torch.manual_seed(rank_seed(config, epoch, process.rank))
            for number, index in enumerate(global_batches(len(x), config, epoch)):
                if hasattr(loss, "set_epoch"):  # a scheduled objective (losses.bounds)
                    loss.set_epoch(epoch + number * config.batch_size / len(x))
                part = index.tensor_split(process.world_size)[process.rank]
                batch_x, batch_y = x[part].to(device), y[part].to(device)
                if augment is not None:
                    batch_x = augment(batch_x)
                per_sample = loss(trained, batch_x, batch_y)
                batch_loss = per_sample.mean() * (len(part) * process.world_size / len(index))
                global_loss = sum_over_ranks(batch_loss.detach(), process) / process.world_size
                _check_finite(model, global_loss, epoch + 1, number + 1, config)
                optimizer.zero_grad(set_to_none=True)
                batch_loss.backward()
                optimizer.step()
                _check_finite(model, None, epoch + 1, number + 1, config)
                total += global_loss.item() * len(index)
                count += len(index)
        average_buffers(model, process)
        entry = {"epoch": epoch + 1, "lr": lr, "loss": total / count}
        model.eval()
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, entry, optimizer)
        history.append(entry)
        epochs.set_postfix(loss=f"{total / count:.4f}")
    model.eval()
    return history
