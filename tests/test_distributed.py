"""Training past one process: ``robustgate train`` and ``run`` under torchrun with gloo and two
processes on this machine against the same commands in one process, a run killed mid-way resumed
with the same and with another number of processes, rank 0 alone writing (``distributed_worker``
refuses any file another rank begins), and the pieces of ``robustgate.distributed``.

Tolerance: two processes draw other attack starts on rank 1 (and on CPU normalize batches by each
rank's half), so their figures are not bit-identical to one process's; the validation and test
accuracies agree within ``ACCURACY_TOLERANCE`` and every epoch's mean training loss within
``LOSS_TOLERANCE`` (relative)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import yaml
from conftest import (
    checkpoint_weights,
    interrupt_training_after,
    without_decision_regions,
    without_seconds,
)
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from robustgate import distributed
from robustgate.cli import main
from robustgate.config import TrainConfig
from robustgate.losses import make_loss
from robustgate.threat import ThreatModel
from robustgate.train.loop import check_batches_divide, global_batches

WORKER = Path(__file__).with_name("distributed_worker.py")
ACCURACY_TOLERANCE = 0.03
LOSS_TOLERANCE = 0.05
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                      "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")

TRADES = {
    "name": "trades-tiny", "seed": 0,
    "data": {"name": "threegauss", "n": 200, "validation_size": 60},
    "model": {"architecture": "MLP", "arguments": {"in_features": 2, "hidden": [16, 16]}},
    "loss": {"name": "trades", "threat": {"norm": "linf", "eps": 0.1},
             "params": {"beta_trades": 6.0}, "attack": {"steps": 3, "relative_step": 0.25}},
    "train": {"epochs": 3, "batch_size": 20, "lr": 0.03},
    "validation": {"every": 1},
}


def torchrun(processes: int, arguments: list[str], interrupt_after: int | None = None
             ) -> subprocess.CompletedProcess:
    """``robustgate ARGUMENTS --device cpu --quiet`` in ``processes`` processes started by
    torchrun on this machine (gloo), through :mod:`distributed_worker`."""
    environment = {name: value for name, value in os.environ.items()
                   if name not in TORCHRUN_VARIABLES}
    environment["OMP_NUM_THREADS"] = "1"
    if interrupt_after is not None:
        environment["ROBUSTGATE_TEST_INTERRUPT_AFTER"] = str(interrupt_after)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", str(WORKER), *arguments, "--device", "cpu",
               "--quiet"]
    return subprocess.run(command, env=environment, capture_output=True, text=True,
                          timeout=600)


def finished(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def log(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def files(out: Path) -> set[str]:
    return {str(path.relative_to(out)) for path in out.rglob("*") if path.is_file()}


def assert_close_runs(one: Path, two: Path) -> None:
    """The same epochs, losses within ``LOSS_TOLERANCE``, validation metrics within
    ``ACCURACY_TOLERANCE``."""
    alone, shared = log(one), log(two)
    assert [entry["epoch"] for entry in alone] == [entry["epoch"] for entry in shared]
    for a, b in zip(alone, shared, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=LOSS_TOLERANCE)
        for name, value in a["validation"].items():
            assert b["validation"][name] == pytest.approx(value, abs=ACCURACY_TOLERANCE), name


@pytest.fixture(scope="module")
def trades_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny TRADES config trained in one process and in two."""
    root = tmp_path_factory.mktemp("trades")
    config = write_config(root / "trades.yaml", TRADES)
    assert main(["train", str(config), "--out", str(root / "one"), "--device", "cpu",
                 "--quiet"]) == 0
    finished(torchrun(2, ["train", str(config), "--out", str(root / "two")]))
    return {"config": config, "one": root / "one", "two": root / "two"}


def test_two_processes_train_to_the_metrics_of_one(trades_runs):
    assert_close_runs(trades_runs["one"], trades_runs["two"])
    assert files(trades_runs["two"]) == files(trades_runs["one"])


def test_a_run_killed_midway_resumes_with_the_same_and_another_number_of_processes(
        trades_runs, tmp_path, monkeypatch):
    config = str(trades_runs["config"])
    killed = tmp_path / "killed"
    result = torchrun(2, ["train", config, "--out", str(killed)], interrupt_after=1)
    assert result.returncode != 0
    assert len(log(killed)) == 1 and not (killed / "best.safetensors").exists()
    again_one = tmp_path / "resumed-in-one"
    shutil.copytree(killed, again_one)

    finished(torchrun(2, ["train", config, "--out", str(killed)]))
    assert torch.equal(checkpoint_weights(killed / "best.safetensors"),
                       checkpoint_weights(trades_runs["two"] / "best.safetensors"))
    assert log(killed) == log(trades_runs["two"])

    assert main(["train", config, "--out", str(again_one), "--device", "cpu", "--quiet"]) == 0
    assert_close_runs(trades_runs["one"], again_one)

    killed_alone = tmp_path / "killed-alone"
    interrupt_training_after(monkeypatch, 2)
    assert main(["train", config, "--out", str(killed_alone), "--device", "cpu",
                 "--quiet"]) == 130
    monkeypatch.undo()
    finished(torchrun(2, ["train", config, "--out", str(killed_alone)]))
    assert log(killed_alone)[:2] == log(trades_runs["one"])[:2]
    assert_close_runs(trades_runs["one"], killed_alone)


def test_run_under_torchrun_trains_batch_norm_models_and_rank_0_reports(tmp_path):
    """``robustgate run`` with a ResNet (batch normalization: per-rank batch statistics on CPU,
    running statistics averaged over ranks) and a TRADES CNN on tiny images: rank 0 evaluates
    and reports figures close to one process's."""
    generator = np.random.default_rng(0)
    labels = generator.integers(0, 2, 240)
    images = np.clip(generator.normal(0.35 + 0.3 * labels[:, None, None], 0.15, (240, 8, 8)), 0,
                     1).astype(np.float32)
    np.savez(tmp_path / "images.npz", x=images, y=labels)
    cnn = {"channels": [4, 8], "hidden": 16, "input_size": 8, "num_classes": 2}
    experiment = {
        "name": "tiny-images", "seed": 0,
        "data": {"name": "npz", "path": str(tmp_path / "images.npz"), "validation_size": 40},
        "models": {
            "resnet": {"model": {"architecture": "ResNet", "arguments": {
                "depth": 8, "width": 4, "in_channels": 1, "input_size": 8, "mean": [0.5],
                "std": [0.25]}},
                "train": {"epochs": 2, "batch_size": 40, "lr": 0.05}},
            "trades": {"model": {"architecture": "StridedCNN", "arguments": cnn},
                       "loss": {"name": "trades", "threat": {"norm": "linf", "eps": 0.05},
                                "attack": {"steps": 3}},
                       "train": {"epochs": 2, "batch_size": 40, "lr": 0.05}},
        },
        "evaluation": {"threat": {"norm": "linf", "eps": 0.05},
                       "attack": {"name": "pgd", "steps": 5}, "autoattack_check": 0},
        "compositions": [{"branch": "trades", "core": "resnet"}],
        "adaptive": {"limit": 0},
    }
    config = str(write_config(tmp_path / "experiment.yaml", experiment))
    assert main(["run", config, "--out", str(tmp_path / "one"), "--device", "cpu",
                 "--quiet"]) == 0
    result = torchrun(2, ["run", config, "--out", str(tmp_path / "two")])
    finished(result)
    assert "natural" in result.stdout  # rank 0's table
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())["test"]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())["test"]
    for model in ("resnet", "trades"):
        for name in ("natural_accuracy", "robust_accuracy"):
            assert two[model][name] == pytest.approx(one[model][name], abs=ACCURACY_TOLERANCE)
    assert files(tmp_path / "two") - {"report.html", "report.md"} <= files(tmp_path / "one")


def test_run_under_torchrun_shards_every_model_s_records_and_certificates(tmp_path,
                                                                         monkeypatch):
    """The per-sample work of ``robustgate run`` (every model's attack records, on the training
    split too, its bound certificates and its smoothing certificates, and the sequential
    smoothing selector's decisions on the test points) sharded over two ranks:
    the same files, byte for byte (timing aside), as one process computes from the same trained
    models."""
    mlp = {"architecture": "MLP", "arguments": {"in_features": 2, "hidden": [16, 16]}}
    experiment = {
        "name": "sharded-run", "seed": 0,
        "data": {"name": "threegauss", "n": 300, "validation_size": 60},
        "models": {
            "core": {"model": mlp, "train": {"epochs": 1, "batch_size": 20, "lr": 0.05}},
            "ibp": {"model": mlp, "loss": {"name": "ibp", "threat": {"norm": "linf",
                                                                     "eps": 0.1}},
                    "train": {"epochs": 1, "batch_size": 20, "lr": 0.05},
                    "bounds": {"methods": ["ibp", "crown"], "batch_size": 30}},
            "gaussian": {"model": mlp, "loss": {"name": "gaussian",
                                                "params": {"sigma_train": 0.1}},
                         "train": {"epochs": 1, "batch_size": 20, "lr": 0.05},
                         "smoothing": {"sigma": 0.1, "n0": 20, "n": 200, "alpha": 0.01}},
        },
        "evaluation": {"threat": {"norm": "linf", "eps": 0.1}, "batch_size": 30,
                       "attack": {"name": "pgd", "steps": 5}, "autoattack_check": 0,
                       "splits": ["test", "train"], "certified_radii": [0.1]},
        "compositions": [{"branch": "ibp", "core": "core", "selector": "bounds"},
                         {"branch": "gaussian", "core": "core", "selector": "smoothing"},
                         {"branch": "gaussian", "core": "core", "selector": "smoothing",
                          "sequential": True}],
        "adaptive": {"limit": 0},
    }
    config = str(write_config(tmp_path / "experiment.yaml", experiment))
    one, two = tmp_path / "one", tmp_path / "two"
    without_decision_regions(one)  # rank 0's alone: not under test
    assert main(["run", config, "--out", str(one), "--device", "cpu", "--quiet"]) == 0
    two.mkdir()
    shutil.copytree(one / "models", two / "models")
    for name in ("config.json", "decision_regions.png"):
        shutil.copy(one / name, two / name)
    monkeypatch.setenv("ROBUSTGATE_TEST_SHARD_LOG", str(tmp_path / "shards.log"))
    finished(torchrun(2, ["run", config, "--out", str(two)]))
    written = (tmp_path / "shards.log").read_text()
    per_sample = sorted(str(path.relative_to(one)) for directory in ("records", "certificates")
                        for path in (one / directory).rglob("*.csv"))
    assert {"records/test/core.csv", "records/train/ibp.csv", "certificates/test/ibp.crown.csv",
            "certificates/test/gaussian.csv",
            "records/sequential/gaussian-core-smoothing-sequential.csv"} <= set(per_sample)
    for name in per_sample:
        table = Path(name)
        if table.parent.name in ("test", "train", "sequential"):  # rank 1 computed its shard
            assert f"{table.parent}/.{table.stem}.shard-1-of-2.partial.csv" in written, name
        assert without_seconds(two / name) == without_seconds(one / name), name
    assert not [path for path in two.rglob("*.partial.csv")]
    assert (untimed(json.loads((two / "metrics.json").read_text())["test"])
            == untimed(json.loads((one / "metrics.json").read_text())["test"]))


def test_run_under_torchrun_shares_the_composition_stage_s_per_sample_work(tmp_path,
                                                                          monkeypatch):
    """Rank 0's composition stage hands its per-sample work to every rank
    (``distributed.Crew``): the AutoAttack cross-check, the records on the validation points
    (an operating point's κ), the adaptive attack on a robustness selector, the cascade's
    decisions on the test points, a learned gate (a model rank 0 alone trained, sent whole),
    soft mixing and a recipe search (its candidate trained by both ranks together). Rank 1
    computes its shard of each; the files are those of one process, the adaptive attack's
    candidate counts summed over the ranks, the candidate trained as one process trains it."""
    mlp = {"architecture": "MLP", "arguments": {"in_features": 2, "hidden": [16, 16]}}
    trades = {"name": "trades", "threat": {"norm": "linf", "eps": 0.1},
              "params": {"beta_trades": 6.0}, "attack": {"steps": 3, "relative_step": 0.25}}
    experiment = {
        "name": "shared-stage", "seed": 0,
        "data": {"name": "threegauss", "n": 300, "validation_size": 80},
        "models": {
            "core": {"model": mlp, "train": {"epochs": 1, "batch_size": 20, "lr": 0.05}},
            "robust": {"model": mlp, "loss": trades,
                       "train": {"epochs": 1, "batch_size": 20, "lr": 0.05}},
        },
        # the check as configured (5 steps): the strong one would cost most of this test's time
        "evaluation": {"threat": {"norm": "linf", "eps": 0.1}, "batch_size": 10,
                       "attack": {"name": "pgd", "steps": 5}, "records_check": "attack",
                       "autoattack_check": 20},
        "compositions": [
            {"branch": "robust", "core": "core",
             "operating_point": {"max_accuracy_drop": 0.05, "kappas": [1, 2]}},
            {"branch": "robust", "core": "core", "cascade": True},
            {"branch": "robust", "core": "core", "selector": "gate"},
            {"branch": "robust", "core": "core", "selector": "mixing"}],
        "calibration": {"gate": {"train": {"epochs": 2, "batch_size": 16, "lr": 0.05}}},
        "adaptive": {"limit": 30, "steps": 5, "restarts": 1, "sanity": 0},
        "searches": [{"name": "recipe", "core": "core", "max_accuracy_drop": 0.2,
                      "choose_size": 30, "recipe": {
                          "model": {**mlp, "init": "@robust"}, "loss": trades,
                          "train": {"epochs": 2, "batch_size": 20, "lr": 0.01},
                          "validation": {"limit": 30}},
                      "grid": {"loss.params.beta_trades": [3.0]}}],
    }
    config = str(write_config(tmp_path / "experiment.yaml", experiment))
    one, two = tmp_path / "one", tmp_path / "two"
    without_decision_regions(one)  # rank 0's alone: not under test
    assert main(["run", config, "--out", str(one), "--device", "cpu", "--quiet"]) == 0
    two.mkdir()
    shutil.copytree(one / "models", two / "models",
                    ignore=shutil.ignore_patterns("gates"))  # rank 0 trains the gate again
    for name in ("config.json", "decision_regions.png"):
        shutil.copy(one / name, two / name)
    monkeypatch.setenv("ROBUSTGATE_TEST_SHARD_LOG", str(tmp_path / "shards.log"))
    finished(torchrun(2, ["run", config, "--out", str(two)]))
    written = (tmp_path / "shards.log").read_text()
    shared = ["autoattack/core.csv", "autoattack/robust.csv", "records/validation/robust.csv",
              "records/validation/core.csv"] + [
        str(path.relative_to(one)) for directory in ("adaptive", "cascade")
        for path in (one / "records" / directory).glob("*.csv")]
    search = one / "searches" / "recipe"
    shared += [str(path.relative_to(one)) for path in (search / "core").rglob("*.csv")]
    assert len(shared) == 9 + 2, shared  # the core's records on the choosing and confirming parts
    # the search's candidate trained by both ranks together, to what one process trains, and
    # its records computed by both (rank 1 its shard of each)
    candidate = search.relative_to(one) / "candidates" / "0"
    assert f"1 trains {two / candidate / 'model'}" in written
    assert_close_runs(one / candidate / "model", two / candidate / "model")
    for split in ("choose", "confirm", "test"):
        assert f"{candidate}/records/.{split}.shard-1-of-2.partial.csv" in written, split
        assert (two / candidate / "records" / f"{split}.csv").exists()
    for name in shared:
        table = Path(name)
        assert f"{table.parent}/.{table.stem}.shard-1-of-2.partial.csv" in written, name
        assert without_seconds(two / name) == without_seconds(one / name), name
    for path in (one / "records" / "adaptive").glob("*.candidates.json"):
        assert (json.loads((two / path.relative_to(one)).read_text())
                == json.loads(path.read_text())), path.name
    # the cascade's stages are chosen by their measured cost (each run may choose others, with
    # the same decisions): its counts cover every test point over both ranks
    (decided,) = (two / "records" / "cascade").glob("*.decided.json")
    tested = len(decided.with_name(decided.name.replace(".decided.json", ".csv"))
                 .read_text().splitlines()) - 1
    assert tested > 0 and sum(json.loads(decided.read_text()).values()) == tested
    assert not [path for path in two.rglob("*.partial.csv")] and not (two / ".crew").exists()
    figures = [untimed(json.loads((run / "metrics.json").read_text())["test"])
               for run in (one, two)]
    for test in figures:
        test["robust→core [cascade]"].pop("cascade")
    assert figures[0] == figures[1]


class _Summed:
    """A crew's task: this rank's sum of the rows it takes of ``data`` through ``model`` (a shared
    object, which travels by name), and where ``data`` came from."""

    def __init__(self, model: nn.Module, data: torch.Tensor) -> None:
        self.model, self.data = model, data

    def __call__(self, process: distributed.Process) -> tuple[float, int, bool]:
        rows = self.data[process.rank :: process.world_size]
        return float(self.model(rows).sum()), len(rows), self.model is _SHARED_MODEL[0]


_SHARED_MODEL: list[nn.Module] = []


def _crew_worker(rank: int, port: int, directory: str) -> None:
    os.environ.update({"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    torch.manual_seed(0)
    _SHARED_MODEL.append(nn.Linear(4, 1))
    process = distributed.start("cpu")
    crew = distributed.Crew(process, "cpu", {"model": _SHARED_MODEL[0]}, directory)
    try:
        if not process.is_main:
            crew.serve()
            return
        with crew:
            # 4 million floats (16 MB, twice the store's value cap), of which the task carries a
            # slice of 3 million: the slice's own elements travel, not its storage
            data = torch.arange(4_000_000, dtype=torch.float32).view(-1, 4) / 4e6
            task = _Summed(_SHARED_MODEL[0], data[: 750_000])
            results = crew.share(task)
            assert [count for _, count, _ in results] == [375_000, 375_000]
            assert all(shared for _, _, shared in results)  # each rank's own model
            assert sum(total for total, _, _ in results) == pytest.approx(
                float(_SHARED_MODEL[0](data[: 750_000]).sum()), rel=1e-5)
            assert crew.share(task) == results  # a second task, after the first's clean-up
    finally:
        distributed.stop()
    assert not Path(directory).exists()  # every task file removed, the directory too


def test_a_crew_shares_tasks_larger_than_the_store_takes_and_sends_shared_models_by_name(
        tmp_path):
    import socket

    import torch.multiprocessing as multiprocessing

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    multiprocessing.spawn(_crew_worker, args=(port, str(tmp_path / ".crew")), nprocs=2)


def untimed(value: Any) -> Any:
    """``value`` without its timing entries (keys naming seconds)."""
    if isinstance(value, dict):
        return {key: untimed(item) for key, item in value.items() if "seconds" not in key}
    return value


def test_a_crew_sends_a_device_as_the_receiving_rank_s_own():
    """A task naming rank 0's device (a search candidate's training) computes on the receiving
    rank's own device of that type; a device of another type travels as it is."""
    sender = distributed.Crew(distributed.ALONE, "cuda:0")
    receiver = distributed.Crew(distributed.ALONE, "cuda:1")
    task = {"run": torch.device("cuda:0"), "other": torch.device("cpu")}
    assert receiver._loads(sender._dumps(task)) == {"run": torch.device("cuda:1"),
                                                    "other": torch.device("cpu")}


def test_one_process_is_rank_0_of_1_and_helpers_do_nothing(monkeypatch):
    for name in TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert distributed.current() == distributed.Process() == distributed.ALONE
    assert distributed.current().is_main
    assert distributed.start("cpu") == distributed.ALONE and not dist.is_initialized()
    distributed.barrier()
    assert distributed.mean_over_ranks({"a": 0.5}, 10) == {"a": 0.5}
    model = nn.Linear(2, 2)
    assert distributed.parallel(model, distributed.ALONE) is model
    assert distributed.unwrap(model) is model


def test_torchrun_environment_is_read_and_a_bad_one_refused(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.current() == distributed.Process(rank=3, world_size=4, local_rank=1)
    assert not distributed.current().is_main
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK=4, WORLD_SIZE=4"):
        distributed.current()
    monkeypatch.setenv("RANK", "two")
    with pytest.raises(ValueError, match="RANK='two'"):
        distributed.current()


def test_under_torchrun_cuda_means_the_rank_s_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.rank_device("cuda") == torch.device("cuda:1")
    assert distributed.rank_device("auto") == torch.device("cuda:1")
    assert distributed.rank_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="LOCAL_RANK 1, on cuda:1"):
        distributed.rank_device("cuda:0")
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(ValueError, match="LOCAL_RANK 2, but this machine has 2 GPUs"):
        distributed.rank_device("cuda")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert distributed.rank_device("cuda:1") == torch.device("cuda:1")  # one process: as ever


def test_shards_are_contiguous_disjoint_and_cover_every_index():
    for count in (0, 1, 7, 10):
        for world_size in (1, 2, 3):
            parts = [distributed.shard(count, distributed.Process(rank, world_size))
                     for rank in range(world_size)]
            assert [i for part in parts for i in part] == list(range(count))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_the_global_batch_is_shared_by_ranks_or_refused():
    config = TrainConfig(epochs=1, batch_size=4, seed=0)
    batches = global_batches(10, config, epoch=0)
    assert [len(batch) for batch in batches] == [4, 4, 2]
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    check_batches_divide(10, 4, 2)
    with pytest.raises(ValueError, match="batches of 4 over 9 training samples"):
        check_batches_divide(9, 4, 2)  # the last batch holds 1 sample for 2 ranks
    with pytest.raises(ValueError, match="batches of 2"):
        check_batches_divide(10, 2, 3)


def test_the_training_attack_runs_against_the_unwrapped_model(tmp_path):
    """Only the loss forwards go through DistributedDataParallel: the inner PGD of TRADES (and
    of ERA) gets the module inside it, and the loss still back-propagates through the wrapper."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 3))
        wrapped = DistributedDataParallel(model)
        attacked = []

        def attack(inner: nn.Module, x: torch.Tensor, target: torch.Tensor,
                   threat: ThreatModel) -> torch.Tensor:
            attacked.append(inner)
            return x
        threat = ThreatModel("linf", 0.1)
        for name in ("trades", "era"):
            loss = make_loss(name, threat, attack=attack)
            loss(wrapped, torch.rand(4, 2), torch.tensor([0, 1, 2, 0])).mean().backward()
        assert attacked == [model, model]
        assert all(p.grad is not None for p in model.parameters())
    finally:
        dist.destroy_process_group()


def test_every_kind_of_objective_trains_under_torchrun_as_in_one_process(tmp_path):
    """ERA (inner PGD from the prediction), IBP and its abstain form (bounds propagated through
    the unwrapped model, their gradients averaged by the wrapper's backward) and CRA (noise drawn
    per rank) in ``robustgate run``: the test figures of two processes close to one's; for CRA the
    natural accuracy only, since its base model's attacked robustness is no aim of it and moves
    with the noise drawn (0.87 in one process, 0.93 in two, at 3 epochs)."""
    mlp = {"architecture": "MLP", "arguments": {"in_features": 2, "hidden": [16, 16]}}
    threat = {"norm": "linf", "eps": 0.1}
    train = {"epochs": 3, "batch_size": 20, "lr": 0.03}
    experiment = {
        "name": "objectives", "seed": 0, "data": {"name": "threegauss", "n": 200},
        "models": {
            "era": {"model": mlp, "loss": {"name": "era", "threat": threat,
                                            "attack": {"steps": 3}}, "train": train},
            "ibp": {"model": mlp, "loss": {"name": "ibp", "threat": threat, "params": {
                "warmup_epochs": 1, "ramp_epochs": 1}}, "train": train},
            "cert_era": {"model": mlp, "loss": {"name": "cert_era", "threat": threat},
                         "train": train},
            "cra": {"model": mlp, "loss": {"name": "cra", "params": {
                "sigma_train": 0.1, "copies": 4}}, "train": train},
        },
        "evaluation": {"threat": threat, "attack": {"name": "pgd", "steps": 5},
                       "autoattack_check": 0},
        "adaptive": {"limit": 0},
    }
    config = str(write_config(tmp_path / "objectives.yaml", experiment))
    assert main(["run", config, "--out", str(tmp_path / "one"), "--device", "cpu",
                 "--quiet"]) == 0
    finished(torchrun(2, ["run", config, "--out", str(tmp_path / "two")]))
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())["test"]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())["test"]
    for model in experiment["models"]:
        for name in ("natural_accuracy", "robust_accuracy")[:1 if model == "cra" else 2]:
            assert two[model][name] == pytest.approx(one[model][name], abs=ACCURACY_TOLERANCE), (
                model, name, one[model], two[model])
