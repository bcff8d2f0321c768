"""Sharded certification and evaluation: ``robustgate certify`` and ``robustgate evaluate`` run as
2 processes of one thread each (``torchrun --nproc_per_node 2``, gloo), against 1 process of one
thread and 1 process of two threads; the wall time of the whole command (process start, data,
the per-sample work, the merge), each case in a fresh output directory.

Model: an MLP 2→64→64→64→3 with random weights (the cost does not depend on them) on the
three-Gaussian test set. Certification: randomized smoothing, σ = 0.1, n0 = 100, n = 10,000, α =
0.001, on 300 points; evaluation: the default PGD (50 steps, margin then targeted margin) at
eps∞ 0.05 and 0.1 on 1,000 points, batches of 100. The speed-up of 2 processes over 1 is bounded
by the cores free: the load average is printed before and after.

    .venv/bin/python benchmarks/sharded.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from support.harness import conditions, interleaved, start, table

from robustgate.models import MLP, save_checkpoint

ROBUSTGATE = str(Path(sys.executable).parent / "robustgate")
COMMANDS = {
    "certify": ["certify", "--data", "threegauss", "--limit", "300", "--sigma", "0.1",
                "--n0", "100", "--n", "10000", "--radii", "0.1", "--quiet"],
    "evaluate": ["evaluate", "--data", "threegauss", "--limit", "1000", "--eps", "0.05", "0.1",
                 "--steps", "50", "--batch-size", "100", "--quiet"],
}
LAUNCHES = {
    "2 processes x 1 thread": (2, 1),
    "1 process x 1 thread": (1, 1),
    "1 process x 2 threads": (1, 2),
}


def launch(arguments: list[str], processes: int, threads: int, scratch: Path) -> None:
    """One run of ``robustgate ARGUMENTS`` in a fresh output directory."""
    out = tempfile.mkdtemp(dir=scratch)
    prefix = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", "--no-python"] if processes > 1 else [])
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run([*prefix, ROBUSTGATE, *arguments, "--out", out], check=True,
                   env=environment, stdout=subprocess.DEVNULL)


def main() -> None:
    start("sharded: 2 processes x 1 thread against 1 process x 1 thread and x 2 threads")
    with tempfile.TemporaryDirectory() as directory:
        scratch = Path(directory)
        checkpoint = scratch / "mlp.safetensors"
        save_checkpoint(checkpoint, MLP(2, 3, (64, 64, 64)), "MLP",
                        {"in_features": 2, "num_classes": 3, "hidden": [64, 64, 64]})
        for name, command in COMMANDS.items():
            arguments = [command[0], str(checkpoint), *command[1:]]
            print(f"-- {name}: robustgate {' '.join(command)}")
            cases = {launch_name: (lambda processes=processes, threads=threads,
                                   arguments=arguments: launch(arguments, processes, threads,
                                                               scratch))
                     for launch_name, (processes, threads) in LAUNCHES.items()}
            times = interleaved(cases, warm_up=False)
            table(times, "1 process x 1 thread", unit="command")
            for launch_name in ("2 processes x 1 thread", "1 process x 2 threads"):
                speed_up = min(times["1 process x 1 thread"]) / min(times[launch_name])
                print(f"speed-up of {launch_name} over 1 process x 1 thread (min): "
                      f"{speed_up:.2f}x")
    print(f"after: {conditions()}")


if __name__ == "__main__":
    main()
