"""Checkpoints: weights plus the metadata needed to rebuild the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustgate.io import atomic_write
from robustgate.models.mlp import MLP

ARCHITECTURES: dict[str, type[nn.Module]] = {"MLP": MLP}


def build_model(architecture: str, arguments: dict[str, Any]) -> nn.Module:
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"unknown architecture {architecture!r}; choose from {sorted(ARCHITECTURES)}"
        )
    return ARCHITECTURES[architecture](**arguments)


def save_checkpoint(
    path: str | Path, model: nn.Module, architecture: str, arguments: dict[str, Any],
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write the weights, the architecture and its arguments, and any metadata (atomically)."""
    payload = {
        "architecture": architecture,
        "arguments": arguments,
        "metadata": metadata or {},
        "state_dict": {name: tensor.cpu() for name, tensor in model.state_dict().items()},
    }
    atomic_write(path, lambda temporary: torch.save(payload, temporary))


def load_checkpoint(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model of a checkpoint on ``device``; returns it (in eval mode) and the
    metadata."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        architecture, arguments = payload["architecture"], payload["arguments"]
        state_dict = payload["state_dict"]
    except (RuntimeError, EOFError, KeyError, TypeError) as error:
        raise ValueError(f"{path} is not a readable robustgate checkpoint: {error}") from None
    model = build_model(architecture, arguments)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise ValueError(
            f"{path}: weights do not fit {architecture}({arguments}): {error}"
        ) from None
    return model.to(device).eval(), payload["metadata"]
