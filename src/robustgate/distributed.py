"""One process of a ``torch.distributed`` run started by ``torchrun``, or the only one.

``torchrun --nproc_per_node N`` (``--nnodes`` for several machines) starts N processes per
machine and tells each its place through the environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``). :func:`current` reads it (a lone process is
rank 0 of 1), :func:`start` joins the process group (NCCL for CUDA devices, gloo otherwise), and
the helpers here are no-ops in one process, so that the same code runs either way: training
wraps the model in DistributedDataParallel (:func:`parallel`), averages what each rank measured
(:func:`mean_over_ranks`) and lets rank 0 alone write while the others wait (:func:`barrier`);
where rank 0 runs a stage by itself (counting, composing, reporting), the others stand by as its
:class:`Crew`: they take their shards of every per-sample computation it hands them, and take
part in every training it hands them (a search's candidates).
"""

from __future__ import annotations

import inspect
import io
import os
import pickle
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from robustgate.device import resolve_device
from robustgate.io import atomic_write


@dataclass(frozen=True)
class Process:
    """This process's place: ``rank`` among ``world_size`` processes, ``local_rank`` on its
    machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and reports."""
        return self.rank == 0


# the one process of a run started without torchrun
ALONE = Process()

# DDP's switch that stops it broadcasting rank 0's buffers before every forward (buffers are
# still made equal when the wrapper is built): ``forward_sync_buffers`` since torch 2.13, before
# that ``broadcast_buffers``
NO_FORWARD_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    else {"broadcast_buffers": False})


def _environment_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name}={text!r} is not an integer (torchrun "
                         "sets it; unset it to run in one process)") from None


def current() -> Process:
    """This process's place from torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; a
    process started without torchrun is ``Process()`` (rank 0 of 1)."""
    world_size = _environment_int("WORLD_SIZE", 1)
    rank = _environment_int("RANK", 0)
    local_rank = _environment_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(f"RANK={rank}, WORLD_SIZE={world_size}, LOCAL_RANK={local_rank} do not "
                         "describe a process of a distributed run (0 <= RANK < WORLD_SIZE)")
    return Process(rank, world_size, local_rank)


def rank_device(device: str | torch.device | None = "auto") -> torch.device:
    """The device this process computes on: ``device`` as ``device.resolve_device`` reads it,
    except that under torchrun with several processes ``cuda`` (or ``auto`` on a machine with
    CUDA) means this rank's GPU, ``cuda:LOCAL_RANK``; a ``cuda:N`` naming another GPU is
    refused."""
    resolved = resolve_device(device)
    process = current()
    if resolved.type != "cuda" or process.world_size == 1:
        return resolved
    if resolved.index is not None and resolved.index != process.local_rank:
        raise ValueError(f"device={device!r} under torchrun: each process computes on its own "
                         f"GPU (this one, LOCAL_RANK {process.local_rank}, on "
                         f"cuda:{process.local_rank}); give cuda or auto")
    if process.local_rank >= torch.cuda.device_count():
        raise ValueError(f"device={device!r} under torchrun: this process is LOCAL_RANK "
                         f"{process.local_rank}, but this machine has "
                         f"{torch.cuda.device_count()} GPUs; start one process per GPU "
                         "(--nproc_per_node), or give cpu")
    return resolve_device(f"cuda:{process.local_rank}")


def start(device: str | torch.device | None = "auto") -> Process:
    """Join the process group of a torchrun run (NCCL where ``device`` is CUDA, gloo otherwise)
    when there are several processes and it is not joined yet; returns :func:`current`. In one
    process nothing happens."""
    process = current()
    if process.world_size > 1 and not dist.is_initialized():
        resolved = rank_device(device)
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
    return process


def stop() -> None:
    """Leave the process group (where :func:`start` joined one)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _joined(process: Process | None) -> bool:
    """Whether ``process`` (``None``: this process as torchrun started it) shares work with
    other ranks; refuses a process of several whose group :func:`start` has not joined."""
    world_size = current().world_size if process is None else process.world_size
    if world_size == 1:
        return False
    if not dist.is_initialized():
        raise RuntimeError(f"a process of {world_size} has not joined its process group; call "
                           "robustgate.distributed.start(device) first")
    return True


def barrier(process: Process | None = None) -> None:
    """Wait until every process of the run arrives here; a no-op in one process (and for a
    ``process`` of one, such as :data:`ALONE`: work rank 0 does by itself under torchrun)."""
    if _joined(process):
        dist.barrier()


def mean_over_ranks(values: dict[str, float], count: int, process: Process | None = None
                    ) -> dict[str, float]:
    """The mean of per-sample means over all ranks: each rank's ``values`` measured on its
    ``count`` samples, weighted by that count, so that fractions (accuracies) come out as on
    all samples at once. The same dict in one process (``process`` as in :func:`barrier`).
    Every rank must give the same keys, in the same order."""
    if not _joined(process):
        return dict(values)
    names = list(values)
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")
    sums = torch.tensor([values[name] * count for name in names] + [count],
                        dtype=torch.float64, device=device)
    dist.all_reduce(sums)
    total = float(sums[-1])
    if total == 0:
        raise ValueError("mean_over_ranks: no rank measured any sample")
    return {name: float(sums[i]) / total for i, name in enumerate(names)}


def sum_over_ranks(value: torch.Tensor, process: Process | None = None) -> torch.Tensor:
    """``value`` summed over all ranks (a new tensor); ``value`` itself in one process
    (``process`` as in :func:`barrier`)."""
    if not _joined(process):
        return value
    summed = value.detach().clone()
    dist.all_reduce(summed)
    return summed


def shard(count: int, process: Process) -> range:
    """The indices among ``count`` that ``process`` takes: contiguous slices, in rank order,
    whose lengths differ by at most one (all of them in one process)."""
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    base, extra = divmod(count, process.world_size)
    start = process.rank * base + min(process.rank, extra)
    return range(start, start + base + (process.rank < extra))


def parallel(model: nn.Module, process: Process) -> nn.Module:
    """``model`` as it trains on ``process``: itself in one process; under torchrun wrapped in
    ``DistributedDataParallel`` (gradients averaged over ranks in the backward pass), its batch
    normalization layers turned into ``SyncBatchNorm`` on CUDA (batch statistics over the global
    batch; same parameters, buffers and state-dict keys). On CPU (gloo) ``SyncBatchNorm`` does
    not run: each rank normalizes by its own part of the batch, and :func:`average_buffers`
    averages the running statistics over ranks. Buffers are not broadcast at every forward, so
    that ranks may run different numbers of forwards through the unwrapped model (attacks).
    The model must already be on the rank's device."""
    if process.world_size == 1:
        return model
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    if device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None,
                                   **NO_FORWARD_BUFFER_SYNC)


def unwrap(model: nn.Module) -> nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (``model`` itself otherwise): what
    attacks and bound propagation compute with, so that their forwards and input gradients
    involve no other rank; only the training loss's forwards go through the wrapper, whose
    backward averages the gradients over ranks. (With torch 2.13 and gloo, two ranks running 2
    and 3 PGD steps through a default wrapper, or one with ``find_unused_parameters``, hang at
    the first step where their forward counts differ.)"""
    return model.module if isinstance(model, DistributedDataParallel) else model


def average_buffers(model: nn.Module, process: Process | None = None) -> None:
    """Average the floating-point buffers of ``model`` (batch-norm running statistics) over the
    ranks, in place; a no-op in one process (``process`` as in :func:`barrier`)."""
    if not _joined(process):
        return
    world_size = dist.get_world_size()
    for buffer in unwrap(model).buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer)
            buffer.div_(world_size)


Result = TypeVar("Result")
# the keys of a crew's tasks and results in the process group's store
CREW_KEY = "robustgate/crew"


class Crew:
    """The ranks of a torchrun run while rank 0 runs a stage alone (composing, counting,
    reporting: work that reads every model's records and writes files throughout the run
    directory): rank 0 hands every per-sample computation of that stage (the adaptive attack,
    the AutoAttack cross-check, records on the validation split) to all ranks with
    :meth:`share`, each rank computing its shard (``runner``), while the other ranks
    :meth:`serve` until rank 0 dismisses them (leaving ``with crew:``, also on an error).

    A task is pickled into a file of ``directory`` (on the file system every rank reads, as the
    runner's shard files are), its number and the ranks' small results pass through the process
    group's key-value store (the one torchrun rendezvoused on), which the ranks poll, so that a
    rank waiting while rank 0 works alone for long (composing, the export and sanity checks)
    meets no collective's timeout. A task may itself be collective (a training run every rank
    takes part in). The objects of ``shared`` (the run's models and training split, which every
    rank holds) travel by name and are each rank's own; tensors travel as copies of their own
    elements (not of the storage a slice views) and land on the receiving rank's ``device``,
    and a device of that device's type arrives as the receiving rank's ``device``. A task
    that raises on another rank raises on rank 0 too, naming the rank. Every key and file is
    removed once read, so a later crew starts clean. In one process :meth:`share` runs the task
    and nothing travels."""

    def __init__(self, process: Process, device: torch.device | str = "cpu",
                 shared: Mapping[str, Any] | None = None,
                 directory: str | os.PathLike | None = None, poll_seconds: float = 0.05) -> None:
        self.process = process
        self.device = torch.device(device)
        self.shared = shared if shared is not None else {}  # filled in later by the owner
        self.directory = directory
        self.poll_seconds = poll_seconds
        self._tasks = 0

    def share(self, task: Callable[[Process], Result]) -> list[Result]:
        """On rank 0: ``task(process)`` on every rank; the ranks' results in rank order."""
        if not _joined(self.process):
            return [task(self.process)]
        if not self.process.is_main:
            raise RuntimeError("only rank 0 shares tasks; the other ranks serve()")
        number = self._post(task)
        results = [task(self.process)]  # where it raises, the others are left to torchrun
        for rank, (failed, value) in enumerate(self._answers(number), start=1):
            if failed:
                raise RuntimeError(f"rank {rank} of the crew failed on a shared task: {value}")
            results.append(value)
        return results

    def serve(self) -> None:
        """On every rank but 0: run each task rank 0 shares, in order, until dismissed."""
        if not _joined(self.process) or self.process.is_main:
            return
        number = 0
        while True:
            path = self._receive(self._key("task", number))
            task = None if path is None else self._loads(Path(path).read_bytes())
            try:
                answer = (False, None if task is None else task(self.process))
            except Exception as error:
                answer = (True, f"{type(error).__name__}: {error}")
                raise
            finally:
                _store().set(self._key("result", number, self.process.rank), self._dumps(answer))
            if task is None:
                return
            number += 1

    def dismiss(self, wait: bool = True) -> None:
        """On rank 0: end the other ranks' :meth:`serve` (``wait``: until each has ended)."""
        if _joined(self.process) and self.process.is_main:
            number = self._post(None)
            if wait:
                self._answers(number)
                if self.directory is not None and Path(self.directory).is_dir():
                    Path(self.directory).rmdir()  # its task files are removed as they are read

    def __enter__(self) -> Crew:
        return self

    def __exit__(self, error_type: type[BaseException] | None, *error: object) -> None:
        # after an error on rank 0 the others may wait inside a shared task (at the runner's
        # barrier) and never answer: dismiss them without waiting; torchrun ends a run whose
        # rank failed
        self.dismiss(wait=error_type is None)

    def _key(self, *parts: object) -> str:
        return "/".join([CREW_KEY, str(self.directory), *map(str, parts)])

    def _path(self, number: int) -> Path:
        if self.directory is None:
            raise ValueError("a crew of several processes needs a directory for its tasks")
        return Path(self.directory) / f"task-{number}.pickle"

    def _post(self, task: Callable[[Process], Any] | None) -> int:
        number = self._tasks
        path = None
        if task is not None:
            path = self._path(number)
            data = self._dumps(task)
            atomic_write(path, lambda temporary: temporary.write_bytes(data))
        _store().set(self._key("task", number), self._dumps(None if path is None else str(path)))
        self._tasks += 1
        return number

    def _answers(self, number: int) -> list[tuple[bool, Any]]:
        """Every other rank's answer to task ``number`` (whether it failed, and its result or
        error); then the task's keys and file are removed."""
        answers = [self._receive(self._key("result", number, rank))
                   for rank in range(1, self.process.world_size)]
        store = _store()
        for rank in range(1, self.process.world_size):
            store.delete_key(self._key("result", number, rank))
        store.delete_key(self._key("task", number))
        if self.directory is not None:
            self._path(number).unlink(missing_ok=True)
        return answers

    def _receive(self, key: str) -> Any:
        store = _store()
        while not store.check([key]):
            time.sleep(self.poll_seconds)
        return self._loads(store.get(key))

    def _dumps(self, value: Any) -> bytes:
        buffer = io.BytesIO()
        _SharedPickler(buffer, self.shared).dump(value)
        return buffer.getvalue()

    def _loads(self, data: bytes) -> Any:
        return _SharedUnpickler(io.BytesIO(data), self.shared, self.device).load()


class _SharedPickler(pickle.Pickler):
    """Pickles the objects of ``shared`` as their names, tensors as the bytes of CPU copies
    with their device type, and devices by name."""

    def __init__(self, file: io.BytesIO, shared: Mapping[str, Any]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.names = {id(value): name for name, value in shared.items()}

    def persistent_id(self, value: Any) -> tuple[str, Any, Any] | None:
        if id(value) in self.names:
            return ("shared", self.names[id(value)], None)
        if isinstance(value, torch.device):
            return ("device", str(value), None)
        if isinstance(value, torch.Tensor):
            data = io.BytesIO()
            torch.save(value.detach().cpu().clone(), data)  # its elements, not a view's storage
            return ("tensor", data.getvalue(), (value.device.type, value.requires_grad,
                                                isinstance(value, nn.Parameter)))
        return None


class _SharedUnpickler(pickle.Unpickler):
    """Reads what :class:`_SharedPickler` wrote: names as this rank's ``shared`` objects,
    tensors on this rank's ``device`` (those that were on an accelerator), and a device of this
    rank's device type as that device."""

    def __init__(self, file: io.BytesIO, shared: Mapping[str, Any], device: torch.device) -> None:
        super().__init__(file)
        self.shared, self.device = shared, device

    def persistent_load(self, pid: tuple[str, Any, Any]) -> Any:
        kind, value, details = pid
        if kind == "shared":
            return self.shared[value]
        if kind == "device":  # a device of this rank's type is this rank's own
            device = torch.device(value)
            return self.device if device.type == self.device.type else device
        device_type, requires_grad, parameter = details
        tensor = torch.load(io.BytesIO(value), weights_only=True,
                            map_location="cpu" if device_type == "cpu" else self.device)
        if parameter:
            return nn.Parameter(tensor, requires_grad=requires_grad)
        return tensor.requires_grad_(requires_grad) if requires_grad else tensor


def _store() -> dist.Store:
    """The store of the default process group (torchrun's rendezvous store)."""
    return dist.distributed_c10d._get_default_store()
