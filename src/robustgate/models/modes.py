"""Running a model for inference without disturbing its training state, on inputs of its device
and floating dtype."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from robustgate.inputs import check_outputs


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore its previous mode afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating-point parameter (``float32`` without one)."""
    floating = (p.dtype for p in model.parameters() if p.is_floating_point())
    return next(floating, torch.float32)


def as_model_dtype(x: torch.Tensor, model: nn.Module, name: str = "x") -> torch.Tensor:
    """``x`` in the model's floating dtype: another floating dtype (``float64`` data, ``float16``
    images) is converted, with a warning that says so; anything else is returned as it is (for
    ``inputs.check_inputs`` to refuse)."""
    dtype = model_dtype(model)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dtype == dtype:
        return x
    warnings.warn(f"{name} is {x.dtype}, the model computes in {dtype}: converted {name} to "
                  f"{dtype}", stacklevel=3)
    return x.to(dtype)


def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Logits of ``model`` on ``x`` in eval mode, batched, without gradients, on ``x``'s device;
    non-finite logits are refused (``inputs.check_outputs``)."""
    device = model_device(model)
    x = as_model_dtype(x, model)
    with eval_mode(model), torch.no_grad():
        batches = [
            model(x[start : start + batch_size].to(device)).to(x.device)
            for start in range(0, max(len(x), 1), batch_size)
        ]
    logits = torch.cat(batches)
    check_outputs(logits, type(model).__name__)
    return logits
