"""Validation of input batches (finite, inside the domain, of the shape a model expects) and of a
model's outputs (finite logits)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

DOMAIN_TOLERANCE = 1e-6


def check_inputs(
    x: torch.Tensor,
    input_shape: Sequence[int] | None = None,
    low: float = 0.0,
    high: float = 1.0,
    name: str = "x",
) -> None:
    """Raise ``ValueError`` naming the offending value if ``x`` is not a valid input batch."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 2:
        raise ValueError(
            f"{name} must be a batch of shape (n, *input_shape), got shape {tuple(x.shape)}"
        )
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(
            f"{name} has per-sample shape {tuple(x.shape[1:])}, the model expects "
            f"{tuple(input_shape)}"
        )
    if len(x) == 0:
        return
    finite = torch.isfinite(x.detach())
    if not bool(finite.all()):
        bad = int((~finite).flatten(1).any(dim=1).nonzero()[0])
        raise ValueError(f"{name} holds NaN or infinite values (first at sample {bad})")
    smallest, largest = float(x.detach().min()), float(x.detach().max())
    if smallest < low - DOMAIN_TOLERANCE or largest > high + DOMAIN_TOLERANCE:
        raise ValueError(
            f"{name} has values in [{smallest:.4g}, {largest:.4g}], outside the domain "
            f"[{low}, {high}]; normalization belongs inside the model (a Normalize layer)"
        )


def check_labels(y: torch.Tensor, n: int, num_classes: int | None = None, name: str = "y") -> None:
    """Raise ``ValueError`` unless ``y`` holds ``n`` integer labels in ``[0, num_classes)``."""
    if not isinstance(y, torch.Tensor) or y.dtype != torch.int64 or y.dim() != 1:
        raise ValueError(f"{name} must be a 1-D int64 tensor of labels")
    if len(y) != n:
        raise ValueError(f"{name} holds {len(y)} labels for {n} inputs")
    if num_classes is not None and len(y) and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"{name} has labels in [{int(y.min())}, {int(y.max())}], the model has "
            f"{num_classes} classes"
        )


PROBABILITY_TOLERANCE = 1e-4


def check_outputs(outputs: torch.Tensor, name: str = "the model") -> None:
    """Raise ``ValueError`` where a model's outputs hold NaN or infinite values (a diverged model,
    whose every NaN row would otherwise be read as class 0), and warn where they look like
    probabilities (every row in ``[0, 1]`` summing to 1): attacks and robustness checks expect
    logits, and the flat gradients of probabilities make a model look more robust than it is.
    (One-hot rows alone are not taken for probabilities: constant logits can be exactly that.)"""
    if torch.compiler.is_compiling():
        return  # a traced program (torch.export) has no values to check
    if outputs.dim() != 2:
        raise ValueError(f"{name} gave outputs of shape {tuple(outputs.shape)}; robustgate "
                         "expects logits of shape (inputs, classes)")
    if len(outputs) == 0:
        return
    values = outputs.detach()
    finite = torch.isfinite(values).all(dim=1)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(
            f"{name} gave NaN or infinite outputs on {bad} of {len(values)} inputs (first at "
            f"input {int((~finite).nonzero()[0])}); a diverged model (retrain it with a lower "
            "learning rate) or inputs it cannot handle"
        )
    inside = (values >= 0) & (values <= 1)
    strictly = (values > 0) & (values < 1)
    if values.shape[1] >= 2 and bool(inside.all()) and bool(strictly.any()) and bool(
            ((values.sum(dim=1) - 1).abs() <= PROBABILITY_TOLERANCE).all()):
        warnings.warn(
            f"{name}'s outputs look like probabilities (every row in [0, 1], summing to 1); "
            "robustgate expects logits: remove the final softmax, or attacks find fewer flips "
            "than there are", stacklevel=3)
