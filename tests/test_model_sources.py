"""The models users have, through configs: a model from a package outside robustgate (trained,
certified through its traced forward, composed under the bound selector, exported and
reported; its checkpoint loads only with trust), and the CIFAR-10 experiment config (a
WideResNet fine-tuned with ERA from a RobustBench-format standard checkpoint, composed with it;
robustgate's ResNet trained with IBP and certified ERA beside it), on generated CIFAR-shaped
data with tiny widths."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from robustgate.cli import main
from robustgate.config import ExperimentConfig, load_config, parse_config
from robustgate.models import build_model, load_checkpoint
from robustgate.pipeline import run_experiment
from tests.test_datasets import write_cifar_archive
from tests.test_zoo import robustbench_wideresnet

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
USER_MODULE = '''
import torch
from torch import nn


class ResidualMLP(nn.Module):
    """A user's residual network: a linear stem, a residual block, a linear head."""

    def __init__(self, in_features: int = 2, num_classes: int = 3, hidden: int = 16):
        super().__init__()
        self.num_classes = num_classes
        self.input_shape = (in_features,)
        self.stem = nn.Linear(in_features, hidden)
        self.block = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden))
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        return self.head(torch.relu(h + self.block(h)))
'''


@pytest.fixture
def user_package(tmp_path, monkeypatch) -> str:
    """A package outside robustgate, importable from ``tmp_path``; its architecture's path."""
    package = tmp_path / "users_models"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "users_models.nets:ResidualMLP"


def test_a_model_from_the_users_package_is_trained_certified_composed_and_reported(
        tmp_path, user_package, capsys):
    config = parse_config({
        "name": "users-model",
        "data": {"name": "threegauss", "n": 120, "validation_size": 20},
        "models": {
            "core": {"model": {"architecture": "MLP", "arguments": {"hidden": [16]}},
                     "train": {"epochs": 1, "batch_size": 40}},
            "mine": {"model": {"architecture": user_package, "arguments": {"hidden": 16}},
                     "loss": {"name": "ibp", "threat": {"eps": 0.05},
                              "params": {"warmup_epochs": 0, "ramp_epochs": 1}},
                     "train": {"epochs": 2, "batch_size": 40, "lr": 0.05},
                     "bounds": {"methods": ["ibp", "crown"]}},
        },
        "evaluation": {"threat": {"eps": 0.05}, "attack": {"steps": 3}, "autoattack_check": 0},
        "compositions": [{"branch": "mine", "core": "core", "selector": "bounds"}],
        "adaptive": {"limit": 0},
    }, ExperimentConfig)
    out = tmp_path / "run"
    result = run_experiment(config, out, device="cpu", progress=False).to_json()
    composed = result["test"]["mine→core [bounds: ibp]"]
    assert 0 <= composed["selection_rate"] <= 1
    assert composed["export"]["agreeing"] == composed["export"]["inputs"]
    assert "mine→core" in (out / "report.md").read_text()
    checkpoint = out / "models" / "mine" / "best.safetensors"
    with pytest.raises(ValueError, match="trust_code=True"):
        load_checkpoint(checkpoint)
    model, _ = load_checkpoint(checkpoint, trust_code=True)
    assert type(model).__name__ == "ResidualMLP"
    certified = tmp_path / "certified"
    arguments = ["certify", str(checkpoint), "--method", "ibp", "--data", "threegauss",
                 "--split", "test", "--limit", "10", "--radii", "0.05", "--out"]
    assert main([*arguments, str(certified), "--quiet"]) != 0
    assert "--trust-code" in capsys.readouterr().err
    assert main([*arguments, str(certified), "--quiet", "--trust-code"]) == 0
    assert json.loads((certified / "summary.json").read_text())["samples"] == 10


def test_an_architecture_that_does_not_import_is_a_clear_error(user_package):
    with pytest.raises(ValueError, match="importing 'no_such_package.nets' failed: "
                                         "ModuleNotFoundError"):
        build_model("no_such_package.nets:Net", {})
    with pytest.raises(ValueError, match="has no nn.Module subclass named 'Missing'"):
        build_model("users_models.nets:Missing", {})
    with pytest.raises(ValueError, match="package.module:ClassName"):
        build_model("users_models.nets:", {})
    assert type(build_model(user_package, {"hidden": 4})).__name__ == "ResidualMLP"


def test_the_cifar10_config_runs_end_to_end_on_generated_data_with_tiny_widths(tmp_path):
    """The shipped config, its data and checkpoint replaced by generated ones and its widths
    made tiny by overrides; beside it robustgate's ResNet trained with IBP, fine-tuned with
    certified ERA and composed under the bound selector."""
    write_cifar_archive(tmp_path, "cifar10", per_batch=8)
    torch.manual_seed(0)
    checkpoint = tmp_path / "cifar10-Standard.pt"
    torch.save(robustbench_wideresnet(10, 1), checkpoint)
    tiny = {"depth": 10, "widen_factor": 1}
    overrides = [f"data.root={tmp_path}", "data.verify=false", "data.validation_size=8",
                 "evaluation.autoattack_check=0", "evaluation.records_check=attack",
                 "evaluation.attack.steps=2", "evaluation.limit=8",
                 "models.era.validation.limit=8", "models.era.loss.attack.steps=2"]
    for name in ("standard", "era"):
        overrides += [f"models.{name}.model.arguments={json.dumps(tiny)}",
                      f"models.{name}.model.init={checkpoint}",
                      f"models.{name}.train.epochs=1", f"models.{name}.train.batch_size=16"]
    config = load_config(CONFIGS / "cifar10-wrn-era.yaml", ExperimentConfig, overrides)
    assert config.evaluation.threat.eps == pytest.approx(1 / 255)
    values = config.model_dump()
    resnet = {"architecture": "ResNet", "arguments": {"depth": 8, "width": 2}}
    values["models"]["certified"] = {
        "model": resnet, "loss": {"name": "ibp", "threat": {"eps": 2 / 255},
                                  "params": {"warmup_epochs": 0, "ramp_epochs": 1}},
        "train": {"epochs": 1, "batch_size": 16}, "bounds": {"methods": ["ibp", "crown"]}}
    values["models"]["certified_era"] = {
        "model": {**resnet, "init": "@certified"},
        "loss": {"name": "cert_era", "threat": {"eps": 2 / 255}},
        "train": {"epochs": 1, "batch_size": 16}, "bounds": {"methods": ["ibp"]}}
    values["evaluation"]["certify_limit"] = 8
    values["compositions"].append(
        {"branch": "certified_era", "core": "standard", "selector": "bounds"})
    result = run_experiment(parse_config(values, ExperimentConfig), tmp_path / "run",
                            device="cpu", progress=False).to_json()
    bounds = "certified_era→standard [bounds: ibp]"
    assert {"standard", "era", "era→standard", bounds} <= set(result["test"])
    export = result["test"][bounds]["export"]
    assert export["agreeing"] == export["inputs"]
    summary = json.loads((tmp_path / "run" / "models" / "standard" / "spec.json").read_text())
    assert summary["spec"]["model"]["init_keys"] == "robustbench"
    standard, _ = load_checkpoint(tmp_path / "run" / "models" / "standard" / "best.safetensors")
    assert torch.equal(standard.normalize.std, torch.ones(1, 3, 1, 1))  # as RobustBench's
    assert "certified_era→standard" in (tmp_path / "run" / "report.md").read_text()
