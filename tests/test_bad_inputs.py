"""Bad inputs, as a new user would give them: every command and model-facing entry point answers
with a clear error naming the value and what is expected, before anything is written; a diverged
model is caught; faults (Ctrl-C, a full disk) end in one line and resume to the uninterrupted
result."""

from __future__ import annotations

import errno
import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import random_linear
from hypothesis import given, settings
from hypothesis import strategies as st

from robustgate import io as robustgate_io
from robustgate.attacks import (
    ATTACKS,
    PGD,
    AutoAttackAdapter,
    check_attack_applies,
    check_robustness,
    make_attack,
)
from robustgate.certify import Smooth, certify_bounds
from robustgate.cli import main
from robustgate.compose import ComposedClassifier
from robustgate.config import (
    DataSettings,
    ExperimentConfig,
    NoiseStudyConfig,
    TrainSpec,
    apply_overrides,
    check_name,
    load_config,
    parse_config,
)
from robustgate.data import load_dataset
from robustgate.evaluate import Records, Selection, evaluate_model
from robustgate.inputs import check_outputs
from robustgate.models import MLP, load_checkpoint, save_checkpoint
from robustgate.select import RobustnessSelector
from robustgate.threat import ThreatModel
from robustgate.train import DivergedError
from robustgate.train import run as training_run
from robustgate.train.run import select_epoch, train_model

MLP_SPEC = {"architecture": "MLP", "arguments": {"in_features": 2, "hidden": [8]}}
EXPERIMENT = {
    "name": "tiny",
    "data": {"name": "threegauss", "n": 120},
    "models": {"core": {"model": MLP_SPEC, "train": {"epochs": 1, "batch_size": 40}}},
    "evaluation": {"attack": {"steps": 3}, "threat": {"eps": 0.05}, "limit": 40},
    "adaptive": {"limit": 0},
}


def _checkpoint(path: Path, classes: int) -> Path:
    torch.manual_seed(0)
    model = MLP(in_features=2, hidden=[8], num_classes=classes)
    save_checkpoint(path, model, "MLP", {"in_features": 2, "hidden": [8], "num_classes": classes},
                    {"num_classes": classes})
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A three- and a two-class checkpoint, records of the first at eps 0.1 and 0.2, and an
    experiment config."""
    root = tmp_path_factory.mktemp("bad-inputs")
    three = _checkpoint(root / "three.safetensors", 3)
    two = _checkpoint(root / "two.safetensors", 2)
    assert main(["evaluate", str(three), "--data", "threegauss", "--eps", "0.1", "0.2",
                 "--limit", "30", "--steps", "3", "--out", str(root / "records"),
                 "--quiet"]) == 0
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(EXPERIMENT))
    return {"root": root, "three": three, "two": two, "config": config,
            "records": root / "records" / "records.csv"}


def _evaluate(files, *options: str, out: Path) -> list[str]:
    return ["evaluate", str(files["three"]), "--data", "threegauss", "--eps", "0.1", "--limit",
            "10", "--steps", "2", *options, "--out", str(out), "--quiet"]


def _refused(arguments: list[str], capsys, *expected: str, out: Path | None = None) -> str:
    """Run the command: it must end with status 2, an error naming every ``expected`` text, no
    traceback, and (for ``out``) nothing written there."""
    assert main(arguments) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    for text in expected:
        assert text in error, (text, error)
    if out is not None:
        assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())
    return error


# -- the command line --------------------------------------------------------------------------


def _commands(files, out: str) -> dict[str, list[str]]:
    records = str(files["records"])
    return {
        "demo": ["demo", "--out", out],
        "train": ["train", str(files["config"]), "--out", out],
        "run": ["run", str(files["config"]), "--out", out],
        "evaluate": _evaluate(files, out=Path(out)),
        "compose": ["compose", "--branch", records, "--core", records, "--eps", "0.1",
                    "--out", out],
        "certify": ["certify", str(files["three"]), "--method", "ibp", "--data", "threegauss",
                    "--out", out],
        "study": ["study", "noise", "disks", "--quick", "--out", out],
    }


@pytest.mark.parametrize("command", ["demo", "train", "run", "evaluate", "compose", "certify",
                                     "study"])
def test_an_existing_file_as_out_is_refused_first(files, tmp_path, capsys, command):
    target = tmp_path / "a-file"
    target.write_text("keep me")
    _refused(_commands(files, str(target))[command], capsys, str(target), "existing file")
    assert target.read_text() == "keep me"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.parametrize("command", ["run", "evaluate"])
def test_a_read_only_out_is_refused_first(files, tmp_path, capsys, monkeypatch, command):
    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: let the permission check see what a user would
        real = os.access
        monkeypatch.setattr(os, "access", lambda path, mode: (
            Path(path) != read_only and real(path, mode)))
    out = read_only / "out"
    _refused(_commands(files, str(out))[command], capsys, str(read_only), "not writable")
    read_only.chmod(0o755)
    assert not out.exists()


def test_configs_that_are_not_yaml_files_are_refused(files, tmp_path, capsys):
    out = tmp_path / "out"
    _refused(["run", str(tmp_path), "--out", str(out)], capsys, str(tmp_path), "directory",
             out=out)
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    _refused(["run", str(broken), "--out", str(out)], capsys, str(broken), "not valid YAML",
             "line 2", out=out)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    _refused(["train", str(binary), "--out", str(out)], capsys, str(binary), "not a text file",
             out=out)


@pytest.mark.parametrize("device", ["tpu", "cuda:banana", "meta"])
def test_an_unknown_device_is_refused(files, tmp_path, capsys, device):
    out = tmp_path / "out"
    _refused(_evaluate(files, "--device", device, out=out), capsys, repr(device), out=out)
    _refused(["run", str(files["config"]), "--device", device, "--out", str(out)], capsys,
             repr(device), out=out)


def test_load_checkpoint_on_cuda_without_cuda_says_so(files):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present here")
    with pytest.raises(ValueError, match="CUDA is not available"):
        load_checkpoint(files["three"], device="cuda")


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("--eps", "-0.05", "'-0.05' is not a radius"),
    ("--eps", "nan", "'nan' is not a radius"),
    ("--eps", "inf", "'inf' is not a radius"),
    ("--limit", "0", "'0' is not an integer >= 1"),
    ("--limit", "-5", "'-5' is not an integer >= 1"),
    ("--batch-size", "0", "'0' is not an integer >= 1"),
    ("--steps", "0", "'0' is not an integer >= 1"),
    ("--restarts", "0", "'0' is not an integer >= 1"),
    ("--relative-step", "0", "'0' is not a finite number > 0"),
    ("--target-classes", "-1", "'-1' is not an integer >= 0"),
    ("--validation-size", "-3", "'-3'"),
])
def test_bad_numbers_on_the_evaluate_command_line(files, tmp_path, capsys, option, value,
                                                  expected):
    out = tmp_path / "out"
    _refused(_evaluate(files, option, value, out=out), capsys, option, expected, out=out)


@pytest.mark.parametrize(("option", "value", "expected"), [
    ("--limit", "0", "'0' is not an integer >= 1"),
    ("--sigma", "-0.5", "'-0.5' is not a finite number > 0"),
    ("--alpha", "1.5", "'1.5' is not a level in (0, 1)"),
    ("--n", "0", "'0' is not an integer >= 1"),
    ("--noise-batch", "0", "'0' is not an integer >= 1"),
    ("--radii", "-1", "'-1' is not a radius"),
])
def test_bad_numbers_on_the_certify_command_line(files, tmp_path, capsys, option, value,
                                                 expected):
    out = tmp_path / "out"
    _refused(["certify", str(files["three"]), "--data", "threegauss", option, value, "--out",
              str(out)], capsys, option, expected, out=out)


@pytest.mark.parametrize(("options", "expected"), [
    (["--eps", "-0.05"], "'-0.05' is not a radius"),
    (["--eps", "nan"], "'nan' is not a radius"),
    (["--eps", "0.1", "--kappa", "0.5"], "'0.5' is not a kappa"),
    (["--eps", "0.1", "--max-accuracy-drop", "-1"], "'-1' is not a finite number >= 0"),
    (["--eps", "0.05", "--kappa", "2"], "holds robustness at eps 0.1, 0.2"),
    (["--eps", "0.1", "--kappa", "1.5"], "needs 0.15, 0.25"),
])
def test_bad_compositions_from_records(files, tmp_path, capsys, options, expected):
    out = tmp_path / "out"
    records = str(files["records"])
    _refused(["compose", "--branch", records, "--core", records, *options, "--out", str(out)],
             capsys, expected, out=out)


def _rewritten(files, tmp_path: Path, name: str, change) -> Path:
    lines = files["records"].read_text().splitlines()
    path = tmp_path / name
    path.write_text("\n".join(change(lines)) + "\n")
    return path


def test_records_that_are_not_robustgate_tables_are_refused_by_name(files, tmp_path, capsys):
    out = tmp_path / "out"
    records = str(files["records"])
    no_label = _rewritten(files, tmp_path, "no-label.csv",
                          lambda lines: [lines[0].replace("label", "lbl"), *lines[1:]])
    binary = tmp_path / "binary.csv"
    binary.write_bytes(bytes(range(256)) * 4)
    bad_flag = _rewritten(files, tmp_path, "bad-flag.csv",
                          lambda lines: [lines[0], lines[1][:-1] + "7", *lines[2:]])
    for path, expected in [(no_label, "lacks the column(s) ['label']"),
                           (binary, "is not a text file"),
                           (bad_flag, "row 1, column robust@0.2: '7' is not 0 or 1")]:
        _refused(["compose", "--branch", str(path), "--core", records, "--eps", "0.1", "--out",
                  str(out)], capsys, str(path), expected, out=out)


def test_records_whose_rows_are_permuted_are_refused(files, tmp_path, capsys):
    """Rows swapped between two inputs of one label: the labels still agree, so only the index
    column shows that each row's indicators now belong to another input."""
    original = Records.read_csv(files["records"])
    first, second = (int(i) for i in np.flatnonzero(original.labels == original.labels[0])[:2])

    def swap(lines):
        rows = list(lines)
        rows[first + 1], rows[second + 1] = rows[second + 1], rows[first + 1]
        return rows

    permuted = _rewritten(files, tmp_path, "permuted.csv", swap)
    out = tmp_path / "out"
    _refused(["compose", "--branch", str(permuted), "--core", str(files["records"]), "--eps",
              "0.1", "--out", str(out)], capsys, str(permuted), "not 0 … 29 in order", out=out)


def test_data_of_another_shape_than_the_models_is_refused_before_anything_is_written(
        files, tmp_path, capsys):
    path = tmp_path / "four.npz"
    np.savez(path, x=np.full((10, 4), 0.5, dtype=np.float32), y=np.zeros(10, dtype=np.int64),
             num_classes=3)
    data = ["--data", "npz", "--path", str(path)]
    for arguments in (["evaluate", str(files["three"]), *data, "--eps", "0.1"],
                      ["certify", str(files["three"]), "--method", "ibp", *data],
                      ["compose", "--branch", str(files["three"]), "--core",
                       str(files["three"]), "--eps", "0.1", *data]):
        out = tmp_path / arguments[0]
        _refused([*arguments, "--out", str(out)], capsys, "per-sample shape (4,), the model "
                 "expects (2,)", out=out)


def test_a_training_config_with_a_bad_model_claims_no_directory(tmp_path, capsys):
    out = tmp_path / "out"
    for model, expected in [({"architecture": "Foo"}, "unknown architecture 'Foo'"),
                            ({**MLP_SPEC, "arguments": {"in_features": 2, "bogus": 1}},
                             "unexpected keyword argument 'bogus'"),
                            ({**MLP_SPEC, "init": str(tmp_path / "train.yaml")},
                             "is not a readable PyTorch state dict")]:
        config = tmp_path / "train.yaml"
        config.write_text(yaml.safe_dump({"name": "t", "data": {"name": "threegauss", "n": 40},
                                          "model": model}))
        _refused(["train", str(config), "--out", str(out)], capsys, expected, out=out)
    config.write_text(yaml.safe_dump({"name": "t", "data": {"name": "threegauss", "n": 40},
                                      "model": MLP_SPEC, "loss": {"name": "nope"}}))
    _refused(["train", str(config), "--out", str(out)], capsys, "unknown loss 'nope'", out=out)


def test_half_a_validation_pair_is_refused(files, tmp_path, capsys):
    records = str(files["records"])
    out = tmp_path / "out"
    _refused(["compose", "--branch", records, "--core", records, "--eps", "0.1",
              "--max-accuracy-drop", "0", "--validation-branch", records, "--out", str(out)],
             capsys, "--validation-branch and --validation-core go together", out=out)


def test_apgd_t_on_a_two_class_model_is_refused_before_it_runs(files, tmp_path, capsys):
    out = tmp_path / "out"
    _refused(["evaluate", str(files["two"]), "--data", "twogauss", "--eps", "0.1", "--limit",
              "10", "--attack", "apgd-t", "--out", str(out)], capsys, "apgd-t",
             "at least 4 classes", "the model has 2", out=out)
    model, _ = load_checkpoint(files["two"])
    x = load_dataset("twogauss", split="test", n=10).x
    with pytest.raises(ValueError, match="at least 4 classes"):
        make_attack("apgd-t", steps=2)(model, x, model(x).argmax(dim=1), ThreatModel("linf", 0.1))


@pytest.mark.parametrize("classes", [2, 3, 4])
@pytest.mark.parametrize("name", ATTACKS)
def test_every_attack_works_on_every_class_count_or_refuses_before_it_runs(name, classes):
    model = random_linear(classes, 2, seed=classes)  # boundaries through the domain's centre
    x = torch.rand(8, 2, generator=torch.Generator().manual_seed(0))
    # a small budget (the ensembles of two and three classes take it) and a radius that leaves
    # inputs robust, so that every attack of an ensemble runs; the standard version keeps the
    # authors' 5,000 Square queries, so there every input is broken first
    attack = AutoAttackAdapter(None, iterations=3) if name == "autoattack" else make_attack(
        name, steps=3)
    eps = 0.5 if (name, classes) == ("autoattack", 4) else 0.05
    try:
        check_attack_applies(attack, classes)
    except ValueError as error:
        assert (name, classes) in {("apgd-t", 2), ("apgd-t", 3)}
        assert f"the model has {classes}" in str(error)
        return
    predicted, robust = check_robustness(model, x, ThreatModel("linf", eps), attack)
    assert predicted.shape == robust.shape == (8,)


def test_bad_names_are_refused_before_anything_is_written(files, tmp_path, capsys):
    for name in ["../../x", "/tmp/absolute", "", "a/b", "..", "a\\b"]:
        config = tmp_path / "named.yaml"
        config.write_text(yaml.safe_dump({**EXPERIMENT, "name": name}))
        _refused(["run", str(config)], capsys, "'name'", repr(name))
        config.write_text(yaml.safe_dump({**EXPERIMENT,
                                          "models": {name: EXPERIMENT["models"]["core"]}}))
        _refused(["run", str(config), "--out", str(tmp_path / "out")], capsys,
                 "'models.key", "is not a name" if name else "a non-empty string",
                 out=tmp_path / "out")
    assert not (tmp_path.parent / "x").exists()


@given(st.text(min_size=1, max_size=12))
@settings(max_examples=200, deadline=None)
def test_a_name_is_one_path_component_inside_the_run_directory(name):
    try:
        check_name(name)
    except ValueError:
        return
    run = Path("/run/directory")
    assert (run / name).resolve().parent == run


def test_a_noise_study_refuses_grids_that_cannot_be_studied(tmp_path, capsys):
    out = tmp_path / "out"
    for grid, expected in [({"disks": {"sigmas": [-1.0]}}, "'disks.sigmas.0'"),
                           ({"disks": {"sigma_trains": [2.0, 4.0]}}, "must hold 0"),
                           ({"gaussians": {"ratios": [0.0, -0.5]}}, "'gaussians.ratios.1'"),
                           ({"mnist": {"sigmas": [float("nan")]}}, "'mnist.sigmas.0'")]:
        config = tmp_path / "study.yaml"
        config.write_text(yaml.safe_dump({"problems": ["disks"], **grid}))
        _refused(["study", "noise", "--config", str(config), "--out", str(out)], capsys,
                 expected, out=out)


def test_a_renamed_key_names_its_successor(tmp_path):
    values = {**EXPERIMENT, "evaluation": {"selector_radius_factor": 2.0},
              "compositions": [{"branch": "core", "core": "core",
                                "deployed_radius_factor": 1.0}],
              "adaptive": {"steer": 1.0}}
    with pytest.raises(ValueError) as error:
        parse_config(values, ExperimentConfig)
    message = str(error.value)
    assert "unknown key 'evaluation.selector_radius_factor' (removed" in message
    assert "'kappa'" in message and "operating_point" in message
    assert "unknown key 'compositions.0.deployed_radius_factor' (renamed to 'kappa'" in message
    assert "unknown key 'adaptive.steer' (renamed to 'steers'" in message


def test_overrides_set_dotted_keys_and_are_validated(files, tmp_path, capsys):
    values = yaml.safe_load(files["config"].read_text())
    changed = apply_overrides(values, ["data.root=/data/x", "models.core.train.epochs=2",
                                       "evaluation.threat={eps: 0.1}", "data.verify=false"])
    config = parse_config(changed, ExperimentConfig)
    assert config.data.root == "/data/x" and config.data.verify is False
    assert config.models["core"].train.epochs == 2 and config.evaluation.threat.eps == 0.1
    assert values["data"].get("root") is None  # the values read are left as they were
    with_list = apply_overrides({"a": [{"b": 1}]}, ["a.0.b=3"])
    assert with_list == {"a": [{"b": 3}]}
    out = tmp_path / "out"
    for override, expected in [("data.root", "give KEY=VALUE"),
                               ("data.name.x=1", "'data.name' is 'threegauss', not a mapping"),
                               ("models.core.train.epochs=0", "'models.core.train.epochs'"),
                               ("evaluation.selector_radius_factor=2", "(removed"),
                               ("name=../up", "is not a name")]:
        _refused(["run", str(files["config"]), "--set", override, "--out", str(out)], capsys,
                 expected, out=out)


def test_an_override_reaches_the_run_and_its_recorded_config(files, tmp_path):
    out = tmp_path / "out"
    train = tmp_path / "train.yaml"
    train.write_text(yaml.safe_dump({"name": "one", "data": {"name": "threegauss", "n": 60},
                                     "model": MLP_SPEC, "train": {"epochs": 1}}))
    assert main(["train", str(train), "--set", "train.batch_size=20", "--set", "data.n=40",
                 "--out", str(out), "--quiet"]) == 0
    spec = json.loads((out / "spec.json").read_text())["spec"]
    assert spec["train"]["batch_size"] == 20


def test_non_canonical_data_files_load_with_verify_false(tmp_path):
    """A copy of MNIST-format data that is not the canonical download: refused by its checksum,
    loaded with ``verify: false`` (the config key; ``--no-verify`` on the command line)."""
    import gzip
    import struct

    images = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    for prefix in ("train", "t10k"):
        header = struct.pack(">4I", 0x803, 2, 28, 28)
        (tmp_path / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(header + images.tobytes()))
        (tmp_path / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(struct.pack(">2I", 0x801, 2) + bytes([3, 7])))
    with pytest.raises(ValueError, match="checksum"):
        load_dataset("mnist", root=tmp_path, split="test")
    data_settings = parse_config({"name": "mnist", "root": str(tmp_path), "verify": False},
                                 DataSettings)
    data = load_dataset(split="test", **data_settings.model_dump(exclude={"limit_train"}))
    assert data.y.tolist() == [3, 7]


# -- faults: Ctrl-C and a full disk ------------------------------------------------------------


def _failing_writes(monkeypatch, fault: BaseException, at: int) -> None:
    """Every atomic write from the ``at``-th on raises ``fault`` (its file is left untouched),
    in every module that writes with it."""
    real = robustgate_io.atomic_write
    calls = [0]

    def write(path, writer):
        calls[0] += 1
        if calls[0] >= at:
            raise fault
        return real(path, writer)

    for module in list(sys.modules.values()):
        if module.__name__.startswith("robustgate") and getattr(
                module, "atomic_write", None) is real:
            monkeypatch.setattr(module, "atomic_write", write)


def _outputs(directory: Path) -> dict[str, object]:
    """Every file of a run but those that hold wall times: its bytes, or for a ``torch.save``
    file (whose archive is named after the temporary file it was written to) what it holds."""
    timed = {"metrics.json", "report.md", "report.html"}
    return {str(path.relative_to(directory)): _content(path)
            for path in sorted(directory.rglob("*")) if path.is_file() and path.name not in timed}


def _content(path: Path) -> object:
    if path.suffix != ".pt":
        return path.read_bytes()

    def plain(value: object) -> object:
        if isinstance(value, torch.Tensor):
            return value.tolist()
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [plain(item) for item in value]
        return value

    return plain(torch.load(path, weights_only=True))


def test_ctrl_c_and_a_full_disk_at_random_points_resume_to_the_uninterrupted_run(
        files, tmp_path, capsys, monkeypatch):
    straight = tmp_path / "straight"
    arguments = ["run", str(files["config"]), "--device", "cpu", "--quiet"]
    assert main([*arguments, "--out", str(straight)]) == 0
    expected = _outputs(straight)
    metrics = json.loads((straight / "metrics.json").read_text())
    rng = random.Random(22)
    for trial, (fault, status) in enumerate([
            (KeyboardInterrupt(), 130),
            (OSError(errno.ENOSPC, "No space left on device", "somewhere"), 1),
            (KeyboardInterrupt(), 130)]):
        out = tmp_path / f"faulted-{trial}"
        attempts = 0
        while True:
            attempts += 1
            with monkeypatch.context() as patch:
                _failing_writes(patch, fault, rng.randint(1, 12))
                code = main([*arguments, "--out", str(out)])
            error = capsys.readouterr().err
            if code == 0:
                break
            assert code == status, error
            assert len(error.strip().splitlines()) == 1 and "Traceback" not in error
            assert "what was finished is kept" in error
            assert attempts < 40
        assert attempts >= 2  # the fault struck at least once
        assert _outputs(out) == expected
        resumed = json.loads((out / "metrics.json").read_text())
        assert {**resumed, "wall_time_s": 0} == {**metrics, "wall_time_s": 0}


# -- divergence ------------------------------------------------------------------------------


def _train_data():
    data = load_dataset("threegauss", split="train", n=200, validation_size=50)
    held_out = load_dataset("threegauss", split="validation", n=200, validation_size=50)
    return (data.x, data.y), (held_out.x, held_out.y)


def test_a_diverging_training_stops_naming_epoch_and_batch(tmp_path, capsys):
    config = tmp_path / "diverge.yaml"
    model = {"architecture": "MLP", "arguments": {"in_features": 2, "hidden": [16, 16]}}
    config.write_text(yaml.safe_dump({"name": "diverge", "data": {"name": "threegauss",
                                                                  "n": 400},
                                      "model": model,
                                      "train": {"epochs": 3, "batch_size": 50, "lr": 1000.0}}))
    out = tmp_path / "out"
    _refused(["train", str(config), "--out", str(out)], capsys, "training diverged in epoch 1, "
             "batch", "the loss is nan", "learning rate 1000", "no epoch finished")
    assert not (out / "best.safetensors").exists() and not (out / "log.jsonl").exists()


def test_a_fine_tuning_that_diverges_keeps_its_last_good_epoch(tmp_path, monkeypatch):
    spec = parse_config({"model": MLP_SPEC, "train": {"epochs": 3, "batch_size": 50},
                         "validation": {"eps": 0.05, "limit": 50, "attack": {"steps": 2}}},
                        TrainSpec)
    train, validation = _train_data()
    real = training_run.make_loss

    def breaking_in_epoch_two(*args, **kwargs):
        loss = real(*args, **kwargs)
        calls = [0]

        def broken(model, x, y):
            calls[0] += 1
            value = loss(model, x, y)
            return value * float("nan") if calls[0] > 3 else value  # 3 batches per epoch
        return broken

    monkeypatch.setattr(training_run, "make_loss", breaking_in_epoch_two)
    with pytest.raises(DivergedError, match="epoch 2, batch 1: the loss is nan.*keeps epoch 1"):
        train_model(spec, train, validation, 3, tmp_path, progress=False)
    log = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [entry["epoch"] for entry in log] == [1]
    kept = torch.load(tmp_path / "state.pt", weights_only=True)["model"]
    assert all(bool(torch.isfinite(value).all()) for value in kept.values())
    monkeypatch.setattr(training_run, "make_loss", real)
    best = train_model(spec, train, validation, 3, tmp_path, progress=False)  # resumes at 2
    model, metadata = load_checkpoint(best)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert "NaN" not in (tmp_path / "log.jsonl").read_text()


def test_a_non_finite_epoch_is_never_selected():
    rule = parse_config({"model": MLP_SPEC, "validation": {
        "select": {"metric": "robust_inaccuracy", "goal": "min"}}}, TrainSpec).validation.select
    history = [{"epoch": 1, "validation": {"robust_inaccuracy": 0.2}},
               {"epoch": 2, "validation": {"robust_inaccuracy": float("nan")}},
               {"epoch": 3, "validation": {"robust_inaccuracy": float("-inf")}}]
    assert select_epoch(history, rule) == 1


def test_evaluating_a_diverged_checkpoint_is_refused(files, tmp_path, capsys):
    model, _ = load_checkpoint(files["three"])
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.fill_(float("nan"))
    nan = tmp_path / "nan.safetensors"
    save_checkpoint(nan, model, "MLP", {"in_features": 2, "hidden": [8], "num_classes": 3})
    out = tmp_path / "out"
    _refused(["evaluate", str(nan), "--data", "threegauss", "--eps", "0.1", "--limit", "20",
              "--out", str(out)], capsys, "NaN or infinite outputs on 20 of 20 inputs",
             "diverged", out=out)
    _refused(["certify", str(nan), "--method", "ibp", "--data", "threegauss", "--limit", "5",
              "--out", str(tmp_path / "c")], capsys, "NaN or infinite outputs")
    _refused(["certify", str(nan), "--sigma", "0.1", "--n", "20", "--n0", "10", "--data",
              "threegauss", "--limit", "5", "--out", str(tmp_path / "s")], capsys,
             "NaN or infinite outputs")
    _refused(["compose", "--branch", str(files["three"]), "--core", str(nan), "--eps", "0.1",
              "--data", "threegauss", "--limit", "5", "--steps", "2", "--out",
              str(tmp_path / "p")], capsys, "NaN or infinite outputs", out=tmp_path / "p")


# -- the Python API ------------------------------------------------------------------------------


class _Probabilities(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).softmax(dim=1)


def test_attacks_refuse_settings_that_cannot_attack():
    with pytest.raises(ValueError, match="steps >= 1.*steps=0"):
        make_attack("pgd", steps=0)
    with pytest.raises(ValueError, match="steps >= 1"):
        PGD(steps=0)
    with pytest.raises(ValueError, match="restarts >= 1"):
        make_attack("apgd-ce", restarts=0)


def test_outputs_that_look_like_probabilities_are_warned_about(files):
    model, _ = load_checkpoint(files["three"])
    x = load_dataset("threegauss", split="test", n=20).x
    with pytest.warns(UserWarning, match="look like probabilities"):
        check_robustness(_Probabilities(model), x, ThreatModel("linf", 0.05),
                         make_attack("pgd", steps=2))
    check_outputs(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # constant one-hot logits: no warning
    with pytest.raises(ValueError, match="NaN or infinite outputs on 1 of 2 inputs .first at "
                       "input 1."):
        check_outputs(torch.tensor([[0.0, 1.0], [float("inf"), 0.0]]))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_inputs_of_another_float_dtype_are_converted_with_a_warning(files, dtype):
    model, _ = load_checkpoint(files["three"])
    x = load_dataset("threegauss", split="test", n=20).x
    threat = ThreatModel("linf", 0.05)
    attack = make_attack("pgd", steps=2)
    expected = check_robustness(model, x, threat, attack)
    with pytest.warns(UserWarning, match=f"x is {dtype}.*converted"):
        got = check_robustness(model, x.to(dtype), threat, attack)
    if dtype == torch.float64:  # exact in float32: the same answers
        assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
    with pytest.warns(UserWarning, match="converted"):
        assert attack(model, x.to(dtype), expected[0], threat).dtype == torch.float32
    with pytest.warns(UserWarning, match="converted"):
        certify_bounds(model, x.to(dtype), threat)
    smooth = Smooth(model, 3, sigma=0.1, votes=10)
    with pytest.warns(UserWarning, match="converted"):
        smooth.certify(x[:2].to(dtype), n0=5, n=10, alpha=0.01)
    composed = ComposedClassifier(model, RobustnessSelector(model, threat, attack), model)
    with pytest.warns(UserWarning, match="converted"):
        composed.predict(x.to(dtype))
    with pytest.raises(TypeError, match="floating-point"):
        check_robustness(model, (x * 255).to(torch.uint8), threat, attack)


def test_smooth_checks_its_class_count_against_the_model(files):
    model, _ = load_checkpoint(files["three"])
    with pytest.raises(ValueError, match="num_classes=5, but the base model has 3"):
        Smooth(model, 5, sigma=0.1)
    anonymous = torch.nn.Sequential(torch.nn.Linear(2, 3))
    with pytest.raises(ValueError, match=r"outputs of shape \(\d+, 3\), Smooth was built for "
                       "num_classes=4"):
        Smooth(anonymous, 4, sigma=0.1).counts(torch.full((2, 2), 0.5), 10)


def test_schemas_validate_study_names_and_data(tmp_path):
    with pytest.raises(ValueError, match="'name'.*is not a name"):
        parse_config({"name": "/etc"}, NoiseStudyConfig)
    (tmp_path / "c.yaml").write_text("name: ok\ndata: {name: threegauss, verify: maybe}\n"
                                     "models: {}\n")
    with pytest.raises(ValueError, match="'data.verify'.*maybe"):
        load_config(tmp_path / "c.yaml", ExperimentConfig)


def _api_cases(model: torch.nn.Module) -> list[tuple[str, object, type, str]]:
    x = torch.full((4, 2), 0.5)
    threat = ThreatModel("linf", 0.1)
    pgd = make_attack("pgd", steps=2)
    one_dimensional = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.Flatten(0))
    records = Records([0, 1], [0, 1], {0.1: [1, 1], 0.2: [1, 1]})
    labels = torch.zeros(4, dtype=torch.int64)
    return [
        ("eps nan", lambda: ThreatModel("linf", float("nan")), ValueError, "eps=nan"),
        ("unknown attack", lambda: make_attack("pgd2"), ValueError, "unknown attack 'pgd2'"),
        ("apgd 0 steps", lambda: make_attack("apgd-ce", steps=0), ValueError, "got 0"),
        ("1-D outputs", lambda: check_robustness(one_dimensional, x, threat, pgd), ValueError,
         r"outputs of shape \(4,\)"),
        ("numpy inputs", lambda: check_robustness(model, x.numpy(), threat, pgd), TypeError,
         "must be a torch.Tensor"),
        ("inputs outside the domain", lambda: check_robustness(model, x + 1, threat, pgd),
         ValueError, "outside the domain"),
        ("NaN inputs", lambda: check_robustness(model, x * float("nan"), threat, pgd),
         ValueError, "NaN or infinite values"),
        ("batch size 0", lambda: evaluate_model(model, x, labels, threat, [0.1], pgd,
                                                batch_size=0, progress=False),
         ValueError, "batch_size must be >= 1, got 0"),
        ("labels beyond the classes", lambda: evaluate_model(
            model, x, torch.full((4,), 5), threat, [0.1], pgd, progress=False), ValueError,
         r"labels in \[5, 5\], the model has 3 classes"),
        ("kappa below 1", lambda: RobustnessSelector(model, threat, pgd, 0.5), ValueError,
         "kappa must be >= 1, got 0.5"),
        ("negative eps in a count", lambda: Selection.robustness(records, -0.1), ValueError,
         "eps must be a finite number >= 0, got -0.1"),
        ("smoothing sigma 0", lambda: Smooth(model, 3, 0.0), ValueError, "sigma must be"),
    ]


@pytest.mark.parametrize("case", range(12))
def test_python_entry_points_refuse_bad_values(files, case):
    model, _ = load_checkpoint(files["three"])
    cases = _api_cases(model)
    assert len(cases) == 12
    _, call, error, message = cases[case]
    with pytest.raises(error, match=message):
        call()


def test_a_smoothed_vote_draws_fresh_noise_unless_a_seed_fixes_it():
    """At an input on the decision boundary every vote is a coin toss: fresh noise gives other
    counts on every call, a fixed seed the same."""
    boundary = torch.nn.Linear(2, 2)
    with torch.no_grad():
        boundary.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        boundary.bias.zero_()
    x = torch.tensor([[0.0, 0.5]])
    fresh = Smooth(boundary, 2, sigma=0.1, votes=200)
    assert len({tuple(fresh(x)[0].tolist()) for _ in range(5)}) > 1
    fixed = Smooth(boundary, 2, sigma=0.1, votes=200, seed=3)
    assert len({tuple(fixed(x)[0].tolist()) for _ in range(5)}) == 1
