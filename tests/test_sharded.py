"""``robustgate evaluate``, ``robustgate certify`` and ``robustgate compose`` sharded across two
processes (gloo on the CPU, on localhost, as under ``torchrun --nproc_per_node 2``): the
per-sample files are those of one process, byte for byte (timing aside), and a sharded run killed
mid-way resumes, also with another number of processes."""

from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as multiprocessing
from conftest import without_seconds

from robustgate.cli import main
from robustgate.data import load_dataset
from robustgate.evaluate import BoundCertificates, Certificates, Records
from robustgate.models import MLP, save_checkpoint

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An MLP fitted briefly to the three Gaussians: some inputs robust, some not."""
    torch.manual_seed(0)
    model = MLP(2, 3, (16,))
    data = load_dataset("threegauss")
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(50):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(data.x), data.y).backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("sharded") / "model.safetensors"
    save_checkpoint(path, model, "MLP", {"in_features": 2, "num_classes": 3, "hidden": [16]})
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, arguments: list[str], stop_at: int) -> None:
    """One process of a ``torchrun`` world: its environment, then the command; with
    ``stop_at``, the per-sample computation is interrupted at its ``stop_at``-th chunk."""
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": str(world_size),
                       "LOCAL_RANK": str(rank), "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    if stop_at:
        _interrupt_chunks(stop_at)
    try:
        code = main(arguments)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if code != (130 if stop_at else 0):
        raise RuntimeError(f"rank {rank}: exit code {code}")


def _interrupt_chunks(stop_at: int) -> None:
    from robustgate import runner

    real = runner.concatenate
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(None)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    runner.concatenate = interrupted


def sharded(arguments: list[str], world_size: int = 2, stop_at: int = 0) -> None:
    multiprocessing.spawn(_worker, args=(world_size, _free_port(), arguments, stop_at),
                          nprocs=world_size)


def test_sharded_evaluation_and_certification_equal_one_process(checkpoint, tmp_path):
    commands = {
        "evaluate": ["evaluate", str(checkpoint), "--data", "threegauss", "--limit", "41",
                     "--eps", "0.1", "0.3", "--steps", "5", "--restarts", "2",
                     "--batch-size", "8", "--quiet"],
        "smoothing": ["certify", str(checkpoint), "--data", "threegauss", "--limit", "41",
                      "--sigma", "0.1", "--n0", "10", "--n", "100", "--radii", "0.05",
                      "--quiet"],
        "crown": ["certify", str(checkpoint), "--data", "threegauss", "--limit", "41",
                  "--method", "crown", "--radii", "0.05", "0.1", "--batch-size", "8",
                  "--quiet"],
        # the composition deployed (a robustness selector: an attack per input) and attacked
        "compose": ["compose", "--branch", str(checkpoint), "--core", str(checkpoint),
                    "--data", "threegauss", "--limit", "41", "--eps", "0.3", "--steps", "5",
                    "--adaptive", "--batch-size", "8", "--quiet"],
    }
    tables = {"evaluate": ["records.csv"], "smoothing": ["certificates.csv"],
              "crown": ["certificates.csv"], "compose": ["predictions.csv", "adaptive.csv"]}
    for name, arguments in commands.items():
        assert main([*arguments, "--out", str(tmp_path / "one" / name)]) == 0
        sharded([*arguments, "--out", str(tmp_path / "two" / name)])
        for file in tables[name]:
            one, two = (tmp_path / run / name / file for run in ("one", "two"))
            assert without_seconds(two) == without_seconds(one), (name, file)
        assert sorted(path.name for path in two.parent.iterdir()) == sorted(
            path.name for path in one.parent.iterdir())
    composed = [json.loads((tmp_path / run / "compose" / "summary.json").read_text())
                for run in ("one", "two")]
    assert composed[0] == composed[1] and 0 < composed[0]["adaptive"]["robust_accuracy"] < 1
    certificates = Certificates.read_csv(tmp_path / "two" / "smoothing" / "certificates.csv")
    assert len(certificates) == 41 and certificates.radii.max() > 0
    records = Records.read_csv(tmp_path / "two" / "evaluate" / "records.csv")
    assert 0 < records.robust_at(0.3).sum() < len(records) and records.accurate.mean() > 0.5


def test_a_sharded_run_killed_midway_resumes_with_another_world_size(checkpoint, tmp_path):
    evaluate = ["evaluate", str(checkpoint), "--data", "threegauss", "--limit", "40",
                "--eps", "0.1", "--steps", "5", "--batch-size", "6", "--quiet"]
    assert main([*evaluate, "--out", str(tmp_path / "whole")]) == 0
    out = tmp_path / "resumed"
    sharded([*evaluate, "--out", str(out)], stop_at=3)
    shards = sorted(path.name for path in out.glob("*.partial.csv"))
    assert shards == ["records.shard-0-of-2.partial.csv", "records.shard-1-of-2.partial.csv"]
    assert not (out / "records.csv").exists()
    assert main([*evaluate, "--out", str(out)]) == 0
    assert (out / "records.csv").read_bytes() == (tmp_path / "whole" / "records.csv").read_bytes()
    assert not list(out.glob("*.partial.csv"))

    certify = ["certify", str(checkpoint), "--data", "threegauss", "--limit", "40", "--method",
               "ibp", "--radii", "0.05", "--batch-size", "6", "--quiet"]
    assert main([*certify, "--out", str(tmp_path / "whole-ibp")]) == 0
    out = tmp_path / "resumed-ibp"
    sharded([*certify, "--out", str(out)], world_size=1, stop_at=3)
    assert (out / "certificates.partial.csv").exists()
    sharded([*certify, "--out", str(out)], world_size=2)
    resumed = BoundCertificates.read_csv(out / "certificates.csv")
    whole = BoundCertificates.read_csv(tmp_path / "whole-ibp" / "certificates.csv")
    assert resumed.margins[0.05].tolist() == whole.margins[0.05].tolist()
    assert without_seconds(out / "certificates.csv") == without_seconds(
        tmp_path / "whole-ibp" / "certificates.csv")
