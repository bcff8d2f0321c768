"""Sharded certification and evaluation: ``robustgate certify`` and ``robustgate evaluate`` run as
2 processes of one thread each (``torchrun --nproc_per_node 2``, gloo), against 1 process of one
thread and 1 process of two threads; the wall time of the whole command (process start, data,
the per-sample work, the merge), each case in a fresh output directory.

Model: an MLP 2→64→64→64→3 with random weights (the cost does not depend on them) on the
three-Gaussian test set. Certification: randomized smoothing, σ = 0.1, n0 = 100, n = 100,000
(Cohen et al.'s N), α = 0.001, on 200 points (two chunks of 100, one per rank); evaluation: PGD
of 200 steps (margin then targeted margin) at four radii on 1,000 points, batches of 100 (ten
chunks, five per rank). Each command is also timed at a negligible workload (one or two inputs,
one step or 100 noise draws): its *start* (interpreter and torch import, torchrun's rendezvous
and gloo's set-up, the data, the merge), which a longer run pays once. The speed-up of the
per-sample work is ``(whole − start)`` of one process over that of two. The speed-up of 2
processes over 1 is bounded by the cores free: the load average is printed before and after.
The sharded runs are ``torchrun --standalone --nproc_per_node 2 --no-python robustgate --
certify …``: without the ``--``, torchrun's own option parser takes robustgate's ``--n`` for an
abbreviation of its own.

    .venv/bin/python benchmarks/sharded.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from support.harness import conditions, interleaved, start, table

from robustgate.models import MLP, save_checkpoint

ROBUSTGATE = str(Path(sys.executable).parent / "robustgate")
CERTIFY = ["certify", "--data", "threegauss", "--sigma", "0.1", "--n0", "100", "--radii", "0.1",
           "--quiet"]
EVALUATE = ["evaluate", "--data", "threegauss", "--eps", "0.02", "0.05", "0.1", "0.2",
            "--batch-size", "100", "--quiet"]
COMMANDS = {  # name: (the measured workload, the same command at a negligible one)
    "certify": ([*CERTIFY, "--limit", "200", "--n", "100000"],
                [*CERTIFY, "--limit", "2", "--n", "100"]),
    "evaluate": ([*EVALUATE, "--limit", "1000", "--steps", "200"],
                 [*EVALUATE, "--limit", "2", "--steps", "1", "--batch-size", "1"]),
}
LAUNCHES = {
    "2 processes x 1 thread": (2, 1),
    "1 process x 1 thread": (1, 1),
    "1 process x 2 threads": (1, 2),
}
BASE = "1 process x 1 thread"


def launch(arguments: list[str], processes: int, threads: int, scratch: Path) -> None:
    """One run of ``robustgate ARGUMENTS`` in a fresh output directory."""
    out = tempfile.mkdtemp(dir=scratch)
    command = [ROBUSTGATE, *arguments, "--out", out]
    if processes > 1:  # torchrun; "--" keeps it from reading robustgate's --n as its own --n…
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={processes}", "--no-python", ROBUSTGATE, "--",
                   *command[1:]]
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def main() -> None:
    start("sharded: 2 processes x 1 thread against 1 process x 1 thread and x 2 threads")
    with tempfile.TemporaryDirectory() as directory:
        scratch = Path(directory)
        checkpoint = scratch / "mlp.safetensors"
        save_checkpoint(checkpoint, MLP(2, 3, (64, 64, 64)), "MLP",
                        {"in_features": 2, "num_classes": 3, "hidden": [64, 64, 64]})
        for name, (work, negligible) in COMMANDS.items():
            print(f"-- {name}: robustgate {' '.join(work)}")
            print(f"   start: robustgate {' '.join(negligible)}")
            cases = {}
            for launch_name, (processes, threads) in LAUNCHES.items():
                for label, command in (("", work), (" (start)", negligible)):
                    arguments = [command[0], str(checkpoint), *command[1:]]
                    cases[launch_name + label] = (
                        lambda arguments=arguments, processes=processes, threads=threads:
                        launch(arguments, processes, threads, scratch))
            times = interleaved(cases, warm_up=False)
            table(times, BASE, unit="command")
            for launch_name in ("2 processes x 1 thread", "1 process x 2 threads"):
                whole = statistics.median(times[BASE]) / statistics.median(times[launch_name])
                work_base = (statistics.median(times[BASE])
                             - statistics.median(times[BASE + " (start)"]))
                work_case = (statistics.median(times[launch_name])
                             - statistics.median(times[launch_name + " (start)"]))
                print(f"speed-up of {launch_name} over {BASE} (medians): whole command "
                      f"{whole:.2f}x, per-sample work {work_base / work_case:.2f}x")
    print(f"after: {conditions()}")


if __name__ == "__main__":
    main()
