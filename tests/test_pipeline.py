import dataclasses
import json

import pytest

from robustgate.cli import main
from robustgate.config import DemoConfig
from robustgate.pipeline import COMPOSITIONS, MODELS, SPLITS, run_demo
from robustgate.train import TrainConfig

SMALL = DemoConfig(
    n_train=120, n_test=80, hidden=(16, 16), train=TrainConfig(epochs=2, batch_size=20),
    eval_attack_steps=5, eval_attack_restarts=1,
)


def test_small_demo_writes_the_report_and_resumes(tmp_path):
    metrics = run_demo(SMALL, tmp_path, device="cpu", progress=False)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(metrics))
    assert set(saved) == set(SPLITS)
    for split in SPLITS:
        assert set(saved[split]) == {*MODELS, *COMPOSITIONS}
        for values in saved[split].values():
            for key in ("natural_accuracy", "robust_accuracy", "robust_inaccuracy", "non_robust"):
                assert 0.0 <= values[key] <= 1.0
    report = (tmp_path / "report.md").read_text()
    assert "| composed (exact) |" in report and "| standard |" in report
    assert (tmp_path / "decision_regions.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "config.json").read_text())["n_train"] == 120
    weights = (tmp_path / "models" / "era.safetensors").stat().st_mtime_ns
    assert run_demo(SMALL, tmp_path, device="cpu", progress=False) == metrics
    assert (tmp_path / "models" / "era.safetensors").stat().st_mtime_ns == weights


def test_a_different_config_in_the_same_directory_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"eps": 0.3}))
    with pytest.raises(ValueError, match="different config"):
        run_demo(SMALL, tmp_path, device="cpu", progress=False)
    assert json.loads((tmp_path / "config.json").read_text()) == {"eps": 0.3}


def test_config_rejects_unknown_keys_and_bad_values():
    with pytest.raises(ValueError, match="unknown config keys \\['epsilon'\\]"):
        DemoConfig.from_dict({"epsilon": 0.1})
    with pytest.raises(ValueError, match="train.epoch"):
        DemoConfig.from_dict({"train": {"epoch": 3}})
    with pytest.raises(ValueError, match="eps"):
        DemoConfig(eps=0.6)  # the selector's 2·eps would exceed the domain
    assert DemoConfig.from_dict(SMALL.to_dict()) == SMALL


@pytest.mark.parametrize("change, message", [({"dataset": "moons"}, "unknown synthetic data set"),
                                              ({"era_weight": "hardest"}, "weight must be")])
def test_a_bad_data_set_or_weight_is_refused_before_anything_is_written(tmp_path, change,
                                                                       message):
    with pytest.raises(ValueError, match=message):
        run_demo(dataclasses.replace(SMALL, **change), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert main(["demo", "--out", str(tmp_path), "--quiet"]) == 2
    assert "different config" in capsys.readouterr().err


@pytest.mark.slow
def test_the_demo_recipe_reproduces_the_paper_picture(tmp_path):
    """The full recipe on threegauss (about a minute): the targets of the demo."""
    metrics = run_demo(DemoConfig(seed=0), tmp_path, device="cpu", progress=False)
    for split in SPLITS:
        m = metrics[split]
        assert m["standard"]["natural_accuracy"] >= 0.99
        assert m["trades"]["robust_accuracy"] >= 0.96
        assert m["era"]["robust_inaccuracy"] <= 0.005
        assert m["era"]["robust_accuracy"] >= m["trades"]["robust_accuracy"] - 0.02
        assert m["trades"]["robust_inaccuracy"] > m["era"]["robust_inaccuracy"]
        sound, exact = m["composed"], m["composed (exact)"]
        assert sound["natural_accuracy"] >= m["standard"]["natural_accuracy"] - 0.005
        assert m["composed (unattacked)"]["robust_accuracy"] >= m["era"]["robust_accuracy"] - 0.01
        # the count is a lower bound on the deployed system's exact robust accuracy
        assert sound["robust_accuracy"] <= exact["robust_accuracy"]
        assert exact["natural_accuracy"] == pytest.approx(sound["natural_accuracy"], abs=0.005)
