"""The demo: an experiment config shipped with the package, run by the experiment pipeline."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import interrupt_at_call, without_decision_regions

from robustgate.cli import main
from robustgate.config import ExperimentConfig, demo_config, parse_config
from robustgate.evaluate import Records, Routes
from robustgate.evaluate.results import ExperimentResults
from robustgate.pipeline import experiment, run_experiment

SPLITS = ("train", "test")
MODELS = ("standard", "trades", "era")
COMPOSITION = "era→standard"


def small_demo(**changes) -> ExperimentConfig:
    """The demo's config, small: 100 points per split, 2 epochs, 5 attack steps (raised to the
    strong check's 20), a coarse grid, no AutoAttack cross-check."""
    values = demo_config().model_dump()
    values["data"]["n"] = 100
    for spec in values["models"].values():
        spec["model"]["arguments"]["hidden"] = [16, 16]
        spec["train"].update(epochs=2, batch_size=20)
    values["evaluation"]["attack"].update(steps=5, restarts=1)
    values["evaluation"]["exact_grid"] = 0.01
    values["evaluation"]["autoattack_check"] = 0
    for key, value in changes.items():
        section, _, name = key.partition(".")
        if name:
            values[section][name] = value
        else:
            values[section] = value
    return parse_config(values, ExperimentConfig)


def without_time(result: ExperimentResults) -> dict:
    return {key: value for key, value in result.to_json().items() if key != "wall_time_s"}


def test_the_demo_is_the_shipped_experiment_config():
    config = demo_config()
    assert list(config.models) == list(MODELS) and config.data.name == "threegauss"
    assert config.evaluation.splits == list(SPLITS)
    assert [c.label for c in config.compositions] == [COMPOSITION]
    other = demo_config(dataset="twogauss", seed=3)
    assert other.data.name == "twogauss" and other.seed == 3


def table_rows(report: str, first_cell: str) -> list[list[str]]:
    """The cells of every Markdown table row of ``report`` whose first cell is ``first_cell``."""
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")]
            for line in report.splitlines() if line.startswith("|")]
    return [row for row in rows if row[0] == first_cell]


def percent(fraction: float) -> str:
    return f"{100 * fraction:.2f}%"


def assert_report_matches_records(report: str, run: Path) -> None:
    """The report's test-split figures are those of the per-sample files, recomputed here from
    the files alone (not from metrics.json)."""
    eps = demo_config().evaluation.threat.eps
    for name in MODELS:
        records = Records.read_csv(run / "records" / "test" / f"{name}.csv")
        robust = records.robust_at(eps)
        expected = [percent(records.accurate.mean()), percent((records.accurate & robust).mean()),
                    percent((~records.accurate & robust).mean()), percent((~robust).mean())]
        assert table_rows(report, name)[0][1:5] == expected, name
    composed = Records.read_csv(run / "records" / "composed" / "era-standard.csv")
    routes = Routes.read_csv(run / "selection" / "era-standard.csv").routes
    robust = composed.robust_at(eps)
    row = table_rows(report, COMPOSITION)[0]
    assert row[1:6] == [percent(composed.accurate.mean()),
                        percent((composed.accurate & robust).mean()),
                        percent((~composed.accurate & robust).mean()),
                        percent((~robust).mean()), percent((routes == 0).mean())]
    assert row[6] == percent(composed.accurate[routes == 0].mean())
    # the per-route confusion counts, then the selective-classification row
    rows = [tuple(row[1:]) for row in table_rows(report, COMPOSITION) if len(row) == 4]
    selected = composed.accurate[routes == 0]
    assert rows[-1] == (percent((routes == 0).mean()), percent(1 - selected.mean()), "–")
    assert set(rows[:-1]) == {
        (route, str(int((composed.accurate & (routes == i)).sum())),
         str(int((~composed.accurate & (routes == i)).sum())))
        for i, route in enumerate(["branch 0", "core"])}


def test_small_demo_writes_the_report_with_the_exact_count_and_the_regions(tmp_path):
    result = run_experiment(small_demo(), tmp_path, device="cpu", progress=False)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(result.to_json()))
    # metrics.json reads back into the results it serializes, key for key
    assert ExperimentResults.from_json(saved, small_demo()).to_json() == saved
    for split in SPLITS:
        assert set(saved[split]) == {*MODELS, COMPOSITION}
        composition = saved[split][COMPOSITION]
        for key in ("natural_accuracy", "robust_accuracy", "unattacked_robust_accuracy"):
            assert 0.0 <= composition[key] <= 1.0
        # the count is a lower bound on the exact robust accuracy, up to the grid
        exact = composition["exact"]
        assert composition["robust_accuracy"] <= exact["robust_accuracy"] + 0.02
    report = (tmp_path / "report.md").read_text()
    assert "robust (exact)" in report and "on the training points" in report
    assert_report_matches_records(report, tmp_path)
    assert "![Decision regions](decision_regions.png)" in report
    assert (tmp_path / "decision_regions.png").read_bytes()[:4] == b"\x89PNG"
    assert "data:image/png;base64," in (tmp_path / "report.html").read_text()


def test_an_interrupted_demo_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch):
    straight = run_experiment(small_demo(), without_decision_regions(tmp_path / "straight"),
                              device="cpu", progress=False)
    without_decision_regions(tmp_path / "resumed")
    interrupt_at_call(monkeypatch, experiment, "evaluate_or_resume", 4)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(small_demo(), tmp_path / "resumed", device="cpu", progress=False)
    assert not (tmp_path / "resumed" / "metrics.json").exists()
    monkeypatch.undo()
    models = tmp_path / "resumed" / "models" / "era" / "best.safetensors"
    trained = models.stat().st_mtime_ns
    resumed = run_experiment(small_demo(), tmp_path / "resumed", device="cpu", progress=False)
    assert without_time(resumed) == without_time(straight)
    assert models.stat().st_mtime_ns == trained  # not trained again
    # the run says which check wrote its records (a resume under another one is refused)
    stamp = json.loads((tmp_path / "resumed" / "records_check.json").read_text())
    assert stamp["records_check"].startswith("PGD(")


def test_a_different_config_in_the_same_directory_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"name": "other"}))
    with pytest.raises(ValueError, match="different config"):
        run_experiment(small_demo(), tmp_path, device="cpu", progress=False)
    assert json.loads((tmp_path / "config.json").read_text()) == {"name": "other"}


@pytest.mark.parametrize("change, message", [
    ({"data": {"name": "moons"}}, "unknown data set 'moons'"),
    ({"evaluation.exact_grid": 0.01, "evaluation.threat": {"norm": "l2", "eps": 0.1}},
     "exact_grid"),
])
def test_bad_demo_settings_are_refused_before_anything_is_written(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        run_experiment(small_demo(**change), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_the_exact_grid_on_data_of_more_than_two_features_is_refused(tmp_path):
    x = np.random.default_rng(0).random((20, 3)).astype(np.float32)
    np.savez(tmp_path / "points.npz", x=x, y=(x[:, 0] > 0.5).astype(np.int64))
    config = small_demo(data={"name": "npz", "path": str(tmp_path / "points.npz")})
    with pytest.raises(ValueError, match="exact_grid is for two-dimensional data"):
        run_experiment(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("section", "value", "message"), [
    ("params", {"weight": "hardest"}, "model 'era'.*weight must be"),
    ("attack", {"name": "apgd-ce"}, "model 'era'.*loss.attack.name.*'apgd-ce'"),
])
def test_a_bad_loss_setting_is_refused_before_anything_is_written(tmp_path, section, value,
                                                                  message):
    values = small_demo().model_dump()
    values["models"]["era"]["loss"][section].update(value)
    with pytest.raises(ValueError, match=message):
        run_experiment(parse_config(values, ExperimentConfig), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")
    assert main(["demo", "--out", str(tmp_path), "--quiet"]) == 2
    assert "different config" in capsys.readouterr().err


@pytest.mark.slow
def test_the_demo_recipe_reproduces_the_paper_picture(tmp_path):
    """The full recipe on threegauss (about a minute): the targets of the demo."""
    result = run_experiment(demo_config(seed=0), tmp_path, device="cpu", progress=False)
    for split in SPLITS:
        m = result.split(split)
        assert m["standard"].natural_accuracy >= 0.99
        assert m["trades"].robust_accuracy >= 0.96
        assert m["era"].robust_inaccuracy <= 0.005
        assert m["era"].robust_accuracy >= m["trades"].robust_accuracy - 0.02
        assert m["trades"].robust_inaccuracy > m["era"].robust_inaccuracy
        sound = m[COMPOSITION]
        exact = sound.exact
        assert sound.natural_accuracy >= m["standard"].natural_accuracy - 0.005
        assert sound.unattacked_robust_accuracy >= m["era"].robust_accuracy - 0.01
        # the count is a lower bound on the deployed system's exact robust accuracy
        assert sound.robust_accuracy <= exact["robust_accuracy"]
        assert exact["natural_accuracy"] == pytest.approx(sound.natural_accuracy, abs=0.005)


def test_the_demo_prints_the_test_points_last(tmp_path, capsys, monkeypatch):
    class Result:
        def to_json(self) -> dict:
            return {split: {"standard": {"natural_accuracy": accuracy, "robust_accuracy": 0.5}}
                    for split, accuracy in (("test", 0.25), ("train", 0.75))}

    monkeypatch.setattr("robustgate.cli._experiment", lambda *arguments: Result())
    assert main(["demo", "--out", str(tmp_path / "run"), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.index("train points") < printed.index("test points")
    assert printed.index("75.0%") < printed.index("25.0%")
