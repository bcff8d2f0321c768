"""The process's place under ``torchrun``: its rank, the world size and its local rank; starting
the process group, and a barrier (a no-op in one process)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch.distributed as dist


@dataclass(frozen=True)
class Process:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current() -> Process:
    """This process's place, from torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; one
    process (``Process()``) without them."""
    if "WORLD_SIZE" not in os.environ:
        return Process()
    return Process(int(os.environ.get("RANK", 0)), int(os.environ["WORLD_SIZE"]),
                   int(os.environ.get("LOCAL_RANK", 0)))


def start(device: str) -> Process:
    """This process's place, with the process group started (NCCL for CUDA devices, gloo
    otherwise) where there are several processes and it is not started yet."""
    process = current()
    if process.world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")
    return process


def barrier() -> None:
    """Wait for every process of the group; nothing to wait for in one process."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
