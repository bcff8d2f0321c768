"""What every benchmark shares: the conditions of the run (threads, load average), timing side by
side (the cases interleaved in one process, min and median of the repeats), peak memory of one
call, MNIST where it is on disk (random images otherwise, said so), and briefly trained models.

A ratio is always of two cases timed in the same rounds: ``min/min`` and ``median/median``.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from robustgate.data import load_dataset
from robustgate.losses import make_loss
from robustgate.threat import ThreatModel

MNIST = Path(os.environ.get("ROBUSTGATE_MNIST",
                            Path(__file__).resolve().parents[3] / "shared" / "data" / "mnist"))
REPEATS = int(os.environ.get("ROBUSTGATE_BENCH_REPEATS", "3"))


def start(title: str, threads: int = 1) -> None:
    """Fix the thread count and the seed, and print the conditions."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    print(f"== {title}")
    print(conditions())


def conditions() -> str:
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
            f"{os.cpu_count()} CPUs, load average {load}")


def interleaved(cases: dict[str, Callable[[], object]], repeats: int = REPEATS,
                warm_up: bool = True) -> dict[str, list[float]]:
    """Seconds of each case per round: one warm-up call each (unless the caller warmed them
    up), then ``repeats`` rounds that run every case once in turn."""
    for case in cases.values() if warm_up else ():
        case()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, case in cases.items():
            started = time.perf_counter()
            case()
            times[name].append(time.perf_counter() - started)
    return times


def ratio(times: dict[str, list[float]], name: str, base: str) -> str:
    """``min/min`` and ``median/median`` of ``name`` against ``base``."""
    low = min(times[name]) / min(times[base])
    middle = statistics.median(times[name]) / statistics.median(times[base])
    return f"{low:.2f} / {middle:.2f}x"


def table(times: dict[str, list[float]], base: str, per: int = 1, unit: str = "batch") -> None:
    """One line per case: min and median seconds (per ``unit``, dividing by ``per``) and the
    ratio against ``base``."""
    width = max(len(name) for name in times)
    print(f"{'case':<{width}}  {'min ms':>9}  {'median ms':>9}  vs {base} (min / median)")
    for name, seconds in times.items():
        print(f"{name:<{width}}  {1000 * min(seconds) / per:9.2f}  "
              f"{1000 * statistics.median(seconds) / per:9.2f}  {ratio(times, name, base)}")
    print(f"(per {unit}; {conditions()})")


def print_peak_memory(cases: dict[str, Callable[[], object]], label: str = "") -> None:
    """One line: the resident memory each case adds at its peak (:func:`peak_mib`)."""
    print(f"peak memory added, MiB{label}: " + ", ".join(
        f"{name} {peak_mib(case):.0f}" for name, case in cases.items()))


def peak_mib(call: Callable[[], object]) -> float:
    """The resident memory ``call`` adds at its peak, in MiB: run in a forked child whose peak
    (``VmHWM``) is reset first; ``nan`` where ``/proc`` cannot say."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        try:
            Path("/proc/self/clear_refs").write_text("5")
            before = _status_kib("VmRSS")
            call()
            os.write(write, f"{(_status_kib('VmHWM') - before) / 1024:.1f}".encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    answer = os.read(read, 64).decode()
    os.close(read)
    return float(answer) if answer else float("nan")


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise ValueError(f"/proc/self/status has no {field}")


def mnist(split: str, count: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The first ``count`` MNIST images of ``split`` and their labels, and where they came from;
    random images and labels where MNIST is not on disk (``ROBUSTGATE_MNIST`` names its
    directory)."""
    if (MNIST / "train-images-idx3-ubyte.gz").exists():
        data = load_dataset("mnist", MNIST, split)
        return data.x[:count], data.y[:count], f"MNIST {split} ({MNIST})"
    generator = torch.Generator().manual_seed(1 if split == "test" else 0)
    return (torch.rand(count, 1, 28, 28, generator=generator),
            torch.randint(0, 10, (count,), generator=generator),
            "random images (MNIST not found: set ROBUSTGATE_MNIST)")


def briefly_trained(model: nn.Module, loss_name: str, x: torch.Tensor, y: torch.Tensor,
                    steps: int, eps: float = 0.2, batch_size: int = 100, **params: object,
                    ) -> nn.Module:
    """``model`` after ``steps`` Adam steps (lr 1e-3) of ``loss_name`` at ``eps`` (Linf) on
    batches of ``(x, y)``; a bound loss has its radius ramped over the first half of the steps.
    Returned in eval mode."""
    loss = make_loss(loss_name, ThreatModel("linf", eps), **params)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for step in range(steps):
        if hasattr(loss, "set_epoch"):
            loss.set_epoch(2 * step / steps)
        chosen = torch.randint(0, len(x), (batch_size,), generator=generator)
        optimizer.zero_grad()
        loss(model, x[chosen], y[chosen]).mean().backward()
        optimizer.step()
    return model.eval()
