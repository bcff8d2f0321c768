"""Device choice: CUDA when present, unless the user names a device."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or ``None``) means CUDA when available, else CPU; anything else is passed
    to ``torch.device`` and must be available."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}; give auto (CUDA when present), cpu, cuda "
                         "or cuda:N") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r} was asked for, but CUDA is not available here; "
                             "give cpu or auto")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}: this machine has "
                             f"{torch.cuda.device_count()} CUDA devices (cuda:0 …)")
    elif resolved.type not in ("cpu", "mps") or (
            resolved.type == "mps" and not torch.backends.mps.is_available()):
        raise ValueError(f"device={device!r} is not available here; give auto, cpu, cuda or "
                         "cuda:N")
    return resolved
