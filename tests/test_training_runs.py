import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import checkpoint_weights, interrupt_training_after

from robustgate.cli import main
from robustgate.config import (
    ExperimentConfig,
    SelectionSettings,
    TrainSpec,
    load_config,
    parse_config,
)
from robustgate.data import load_dataset
from robustgate.evaluate import Records
from robustgate.models import MLP, save_checkpoint
from robustgate.pipeline import run_experiment
from robustgate.train.run import initial_model, select_epoch, train_model

SPEC = {
    "model": {"architecture": "MLP", "arguments": {"in_features": 2, "hidden": [16, 16]}},
    "loss": {"name": "trades", "threat": {"eps": 0.05}, "attack": {"steps": 3}},
    "train": {"epochs": 3, "batch_size": 50, "lr": 0.05},
    "validation": {"eps": 0.05, "limit": 100, "attack": {"steps": 5}},
}


def data(split: str):
    dataset = load_dataset("twogauss", split=split, validation_size=100, seed=0, n=400)
    return dataset.x, dataset.y


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path, monkeypatch, optimizer):
    """Adam's moment estimates resume with the weights, as SGD's momentum does."""
    spec = parse_config({**SPEC, "train": {**SPEC["train"], "optimizer": optimizer}}, TrainSpec)
    straight = train_model(spec, data("train"), data("validation"), 2, tmp_path / "straight",
                           progress=False)
    interrupt_training_after(monkeypatch, 2)
    with pytest.raises(KeyboardInterrupt):
        train_model(spec, data("train"), data("validation"), 2, tmp_path / "resumed",
                    progress=False)
    assert not (tmp_path / "resumed" / "best.safetensors").exists()
    monkeypatch.undo()
    resumed = train_model(spec, data("train"), data("validation"), 2, tmp_path / "resumed",
                          progress=False)
    assert torch.equal(checkpoint_weights(straight), checkpoint_weights(resumed))
    log = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text()
           .splitlines()]
    assert [entry["epoch"] for entry in log] == [1, 2, 3]
    assert all("validation" in entry for entry in log)


def test_another_spec_in_the_same_directory_is_refused(tmp_path):
    spec = parse_config({**SPEC, "train": {"epochs": 1, "batch_size": 50}}, TrainSpec)
    train_model(spec, data("train"), None, 2, tmp_path, progress=False)
    other = parse_config({**SPEC, "train": {"epochs": 2, "batch_size": 50}}, TrainSpec)
    with pytest.raises(ValueError, match="another training run"):
        train_model(other, data("train"), None, 2, tmp_path, progress=False)


def test_best_epoch_selection_rules():
    history = [
        {"epoch": 1, "validation": {"robust_accuracy": 0.90, "robust_inaccuracy": 0.05}},
        {"epoch": 2, "validation": {"robust_accuracy": 0.95, "robust_inaccuracy": 0.04}},
        {"epoch": 3},
        {"epoch": 4, "validation": {"robust_accuracy": 0.945, "robust_inaccuracy": 0.01}},
        {"epoch": 5, "validation": {"robust_accuracy": 0.95, "robust_inaccuracy": 0.03}},
    ]
    assert select_epoch(history, SelectionSettings(metric="robust_accuracy")) == 5
    lowest = SelectionSettings(metric="robust_inaccuracy", goal="min", within="robust_accuracy",
                               tolerance=0.01)
    assert select_epoch(history, lowest) == 4
    strict = SelectionSettings(metric="robust_inaccuracy", goal="min", within="robust_accuracy",
                               tolerance=0.0)
    assert select_epoch(history, strict) == 5
    assert select_epoch([{"epoch": 1}], lowest) is None


def test_fine_tuning_the_last_layer_only(tmp_path):
    source = MLP(2, 2, (16, 16))
    save_checkpoint(tmp_path / "base.safetensors", source, "MLP",
                    {"in_features": 2, "num_classes": 2, "hidden": [16, 16]})
    base = str(tmp_path / "base.safetensors")
    spec = parse_config({**SPEC, "model": {**SPEC["model"], "init": base,
                                           "last_layer_only": True}}, TrainSpec)
    model, _ = initial_model(spec, 2, torch.device("cpu"))
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["layers.4.weight", "layers.4.bias"]
    assert torch.equal(model.layers[0].weight, source.layers[0].weight)
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    plain = parse_config({**SPEC, "model": {**SPEC["model"], "init": str(tmp_path / "plain.pt")}},
                         TrainSpec)
    assert torch.equal(initial_model(plain, 2, torch.device("cpu"))[0].layers[0].weight,
                       source.layers[0].weight)


def test_config_errors_name_the_bad_key(tmp_path):
    with pytest.raises(ValueError, match="unknown key 'loss.parms'"):
        parse_config({**SPEC, "loss": {"name": "era", "parms": {}}}, TrainSpec)
    with pytest.raises(ValueError, match="'train.epochs'"):
        parse_config({**SPEC, "train": {"epochs": 0}}, TrainSpec)
    with pytest.raises(ValueError, match="'loss.threat.norm'"):
        parse_config({**SPEC, "loss": {"threat": {"norm": "l1"}}}, TrainSpec)
    (tmp_path / "c.yaml").write_text("- a list\n")
    with pytest.raises(ValueError, match="mapping"):
        load_config(tmp_path / "c.yaml", TrainSpec)
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml", TrainSpec)
    (tmp_path / "twice.yaml").write_text("model:\n  architecture: MLP\ntrain:\n  epochs: 2\n"
                                         "train:\n  epochs: 3\n")
    with pytest.raises(ValueError, match="key 'train' is given twice .line 5"):
        load_config(tmp_path / "twice.yaml", TrainSpec)
    (tmp_path / "list-key.yaml").write_text("model:\n  architecture: MLP\n? [a, b]\n: 1\n")
    with pytest.raises(ValueError, match="list-key.yaml is not valid YAML .line 3, column 3.: "
                       "found unhashable key"):
        load_config(tmp_path / "list-key.yaml", TrainSpec)


EXPERIMENT = {
    "name": "tiny",
    "data": {"name": "twogauss", "validation_size": 100},
    "models": {
        "core": {"model": SPEC["model"], "train": {"epochs": 1, "batch_size": 50}},
        "era": {"model": {**SPEC["model"], "init": "@core"},
                "loss": {"name": "era", "params": {"beta": 0.5}, "threat": {"eps": 0.05},
                         "attack": {"steps": 3}},
                "train": {"epochs": 1, "batch_size": 50, "lr": 0.01}},
    },
    # the cheaper check (APGD-CE as configured), cross-checked against AutoAttack
    "evaluation": {"attack": {"name": "apgd-ce", "steps": 10}, "records_check": "attack",
                   "threat": {"eps": 0.05}, "limit": 60, "autoattack_check": 20},
    "compositions": [{"branch": "era", "core": "core"}],
    "adaptive": {"limit": 20, "steps": 5},
}

SELECTORS = [
    {"branch": "era", "core": "core", "selector": "softmax_response"},
    {"branch": "era", "core": "core", "selector": "entropy", "coverage": 0.8},
    {"branch": "era", "core": "core", "selector": "gate", "selective_accuracy": 0.9},
    {"branch": "era", "core": "core", "selector": "mixing"},
    {"branch": ["era", "core"], "core": "core"},
    {"branch": "era", "core": "core", "kappa": 2},
    {"branch": "era", "core": "core", "operating_point": {"max_accuracy_drop": 0.0,
                                                          "kappas": [1, 1.5, 2]}},
]


def test_a_small_experiment_end_to_end(tmp_path):
    config = parse_config({**EXPERIMENT, "adaptive": {**EXPERIMENT["adaptive"], "sanity": 10,
                                                      "square_queries": 20}}, ExperimentConfig)
    result = run_experiment(config, tmp_path, device="cpu", progress=False)
    assert set(result.test) == {"core", "era", "era→core"}
    composed = result.test["era→core"]
    assert 0 <= composed.selection_rate <= 1
    adaptive = composed.adaptive
    assert adaptive.samples == 20 and adaptive.natural_agrees_with_count
    low, high = adaptive.robust_accuracy_interval
    assert low <= adaptive.robust_accuracy <= high
    assert adaptive.robust_accuracy <= composed.natural_accuracy + 0.2
    assert set(result.autoattack_check) == {"core", "era"}
    for name, check in result.autoattack_check.items():
        assert check.attack == "apgd-ce" and check.autoattack <= check.evaluation + 0.05
        evaluated = Records.read_csv(tmp_path / "records" / "test" / f"{name}.csv")
        strong = Records.read_csv(tmp_path / "autoattack" / f"{name}.csv")
        missed = evaluated.robust_at(0.05)[:20] & ~strong.robust_at(0.05)
        assert check.missed_flips == np.flatnonzero(missed).tolist()
        # and at every radius of the records (the branch's stability radius among them)
        radii = sorted(evaluated.robust)
        assert list(check.missed_flips_by_radius) == [f"{r:g}" for r in radii]
        for radius in radii:
            missed = evaluated.robust_at(radius)[:20] & ~strong.robust_at(radius)
            assert check.missed_flips_by_radius[f"{radius:g}"] == np.flatnonzero(missed).tolist()
    broken = adaptive.counted_but_broken_indices
    assert len(broken) == adaptive.counted_but_broken and broken == sorted(set(broken))
    sanity = adaptive.sanity
    assert sanity["samples"] == 10
    assert set(sanity["robust_accuracy_by_eps"]) == {"0.1", "0.2", "0.4"}
    assert "AutoAttack" in (tmp_path / "report.md").read_text()
    assert "sanity checks on 10 inputs" in (tmp_path / "report.md").read_text()
    records = (tmp_path / "records" / "test" / "era.csv").read_text().splitlines()
    assert records[0].endswith("robust@0.05,robust@0.1") and len(records) == 61
    again = run_experiment(config, tmp_path, device="cpu", progress=False)
    assert again.test == result.test


def test_every_selector_in_an_experiment(tmp_path):
    config = parse_config({**EXPERIMENT, "compositions": [*EXPERIMENT["compositions"], *SELECTORS],
                           "calibration": {"gate": {"train": {"epochs": 2}}},
                           "evaluation": {**EXPERIMENT["evaluation"], "autoattack_check": 0,
                                          "threat": {"eps": 0.2}}},
                          ExperimentConfig)
    result = run_experiment(config, tmp_path, device="cpu", progress=False).test
    response = result["era→core [softmax_response]"]
    (rule, target), = response.extras["calibrated_for"].items()
    assert rule == "composed_accuracy" and 0 < target <= 1
    assert 0 <= response.aurc <= 1 and response.adaptive.samples == 20
    assert result["era→core [entropy]"].extras["calibrated_for"] == {"coverage": 0.8}
    assert result["era→core [gate]"].extras["calibrated_for"] == {"selective_accuracy": 0.9}
    assert (tmp_path / "models" / "gates" / "era.safetensors").exists()
    assert 0 <= result["era→core [mixing]"].extras["weight"] <= 1
    assert result["era→core [κ = 2]"].adaptive.samples == 20
    chosen = result["era→core [operating point: accuracy ≥ core − 0 pt]"]
    point = chosen.operating_point
    assert [p.kappa for p in point.validation_curve] == [1, 1.5, 2]
    assert chosen.kappa == point.kappa in (1, 1.5, 2) and len(point.test_curve) == 3
    if point.chosen.meets_target:
        assert point.chosen.natural_accuracy >= point.chosen.core_accuracy - 1e-9
    chain = result["era→core→core"]
    assert set(chain.routes) == {"branch 0", "branch 1", "core"}
    assert sum(sum(route.values()) for route in chain.routes.values()) == 60
    selection = (tmp_path / "selection" / "era-core-softmax_response.csv").read_text()
    assert selection.startswith("index,score,route\n0,")
    (tmp_path / "report.html").unlink()
    assert main(["report", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text()
    # five plots, and the decision regions of the two-dimensional data
    assert page.count("data:image/png;base64,") == 6 and "AURC" in page
    assert "<h2>Decision regions</h2>" in page
    assert "Operating points of the robustness and bound selectors" in page
    assert "Selectors at matched composed natural accuracy" in (tmp_path / "report.md").read_text()


def test_compose_command_from_records_and_from_checkpoints(tmp_path):
    run = tmp_path / "run"
    run_experiment(parse_config({**EXPERIMENT, "evaluation": {**EXPERIMENT["evaluation"],
                                                              "autoattack_check": 0}},
                                ExperimentConfig), run, device="cpu", progress=False)
    records = run / "records" / "test"
    assert main(["compose", "--branch", str(records / "era.csv"), "--core",
                 str(records / "core.csv"), "--eps", "0.05", "--out", str(tmp_path / "a")]) == 0
    offline = json.loads((tmp_path / "a" / "summary.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())["test"]["era→core"]
    assert offline["metrics"]["robust_accuracy"] == metrics["robust_accuracy"]
    arguments = ["compose", "--branch", str(run / "models" / "era" / "best.safetensors"),
                 "--core", str(run / "models" / "core" / "best.safetensors"), "--eps", "0.05",
                 "--data", "twogauss", "--limit", "20", "--attack", "pgd", "--steps", "10",
                 "--quiet", "--device", "cpu"]
    assert main([*arguments, "--adaptive", "--sanity", "10", "--square-queries", "20", "--out",
                 str(tmp_path / "b")]) == 0
    inference = json.loads((tmp_path / "b" / "summary.json").read_text())
    assert inference["sanity"]["samples"] == 10 and inference["sanity"]["square"]["queries"] == 20
    assert inference["natural_accuracy"] == inference["adaptive"]["natural_accuracy"]
    assert inference["adaptive"]["attack"].startswith("AdaptiveAttack(steps=10,")  # --steps
    assert sum(sum(r.values()) for r in inference["routes"].values()) == 20
    # rerun in the same directory: the tables read back with the same settings, refused with
    # other ones (here another kappa), and refused without the settings they were made with
    assert main([*arguments, "--adaptive", "--sanity", "10", "--square-queries", "20", "--out",
                 str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "summary.json").read_text()) == inference
    assert main([*arguments, "--kappa", "2", "--out", str(tmp_path / "b")]) == 2
    (tmp_path / "b" / "compose.json").unlink()
    assert main([*arguments, "--out", str(tmp_path / "b")]) == 2
    assert main([*arguments, "--selector", "entropy", "--out", str(tmp_path / "c")]) == 2
    # the cascade: bound stages chosen on the validation split, the same answers
    assert main([*arguments, "--cascade", "--validation-size", "40", "--out",
                 str(tmp_path / "e")]) == 0
    cascade = json.loads((tmp_path / "e" / "summary.json").read_text())["cascade"][0]
    assert sum(cascade["decided"].values()) == 20 and cascade["decided"]["attack"] <= 20
    assert ((tmp_path / "e" / "predictions.csv").read_text()
            == (tmp_path / "b" / "predictions.csv").read_text())
    assert main([*arguments, "--cascade", "--out", str(tmp_path / "f")]) == 2  # no validation
    assert main(["compose", "--branch", str(records / "era.csv"), "--core",
                 str(records / "core.csv"), "--eps", "0.05", "--cascade", "--out",
                 str(tmp_path / "g")]) == 2
    assert main(["compose", "--branch", str(records / "era.csv"), "--core",
                 str(run / "models" / "core" / "best.safetensors"), "--eps", "0.05",
                 "--out", str(tmp_path / "d")]) == 2


def test_experiment_references_are_checked(tmp_path):
    bad = {**EXPERIMENT, "compositions": [{"branch": "era", "core": "standard"}]}
    with pytest.raises(ValueError, match="'standard' is not a model"):
        run_experiment(parse_config(bad, ExperimentConfig), tmp_path, progress=False)


def test_evaluate_command_writes_records_and_resumes(tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.random((40, 2)).astype(np.float32)
    np.savez(tmp_path / "points.npz", x=x, y=(x[:, 0] > 0.5).astype(np.int64))
    save_checkpoint(tmp_path / "m.safetensors", MLP(2, 2, (8,)), "MLP",
                    {"in_features": 2, "num_classes": 2, "hidden": [8]})
    arguments = ["evaluate", str(tmp_path / "m.safetensors"), "--data", "npz", "--path",
                 str(tmp_path / "points.npz"), "--attack", "pgd", "--steps", "5",
                 "--batch-size", "16", "--quiet", "--eps"]
    out = tmp_path / "out"
    assert main([*arguments, "0.05", "0.1", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["metrics"]) == {"eps=0.05", "eps=0.1"} and summary["samples"] == 40
    whole = (out / "records.csv").read_text()
    assert len(whole.splitlines()) == 41
    # interrupted after the first batch: the partial file is picked up, the rest evaluated
    (out / "records.csv").unlink()
    (out / "records.partial.csv").write_text("".join(whole.splitlines(True)[:17]))
    assert main([*arguments, "0.05", "0.1", "--out", str(out)]) == 0
    assert (out / "records.csv").read_text() == whole
    assert not (out / "records.partial.csv").exists()
    assert json.loads((out / "summary.json").read_text()) == summary
    assert main([*arguments, "0.05", "--out", str(out)]) == 2
    assert "other settings" in (error := capsys.readouterr().err)
    assert "eps: [0.05, 0.1] there, [0.05] now" in error  # the setting that differs, named
    assert (out / "records.csv").read_text() == whole
    assert main([*arguments, "-1", "--out", str(tmp_path / "bad")]) == 2
    assert "eps" in capsys.readouterr().err


def test_train_command_without_a_validation_split(tmp_path):
    config = {"name": "plain", "data": {"name": "twogauss", "limit_train": 200},
              "model": SPEC["model"], "train": {"epochs": 1, "batch_size": 50}}
    (tmp_path / "plain.yaml").write_text(json.dumps(config))
    assert main(["train", str(tmp_path / "plain.yaml"), "--out", str(tmp_path / "run"),
                 "--quiet"]) == 0
    assert (tmp_path / "run" / "best.safetensors").exists()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["validation"] is None


def test_the_shipped_experiment_configs_load():
    for path in sorted((Path(__file__).parent.parent / "configs").glob("*.yaml")):
        config = load_config(path, ExperimentConfig)
        assert config.compositions, path
    with pytest.raises(ValueError, match="kappa"):
        parse_config({**EXPERIMENT, "compositions": [
            {"branch": "era", "core": "core", "selector": "entropy", "kappa": 2}]},
            ExperimentConfig)
    with pytest.raises(ValueError, match="operating_point"):
        parse_config({**EXPERIMENT, "compositions": [
            {"branch": "era", "core": "core", "kappa": 2, "operating_point": {}}]},
            ExperimentConfig)
    with pytest.raises(ValueError, match="smoothing selector composes at a given kappa"):
        parse_config({**EXPERIMENT, "compositions": [
            {"branch": "era", "core": "core", "selector": "smoothing", "operating_point": {}}]},
            ExperimentConfig)
    with pytest.raises(ValueError, match="bounds selector composes one branch"):
        parse_config({**EXPERIMENT, "compositions": [
            {"branch": ["era", "era"], "core": "core", "selector": "bounds"}]},
            ExperimentConfig)
    bounded = parse_config({**EXPERIMENT, "compositions": [
        {"branch": "era", "core": "core", "selector": "bounds",
         "operating_point": {"max_accuracy_drop": 0.003, "kappas": [1, 2]}}]}, ExperimentConfig)
    composition, = bounded.compositions
    assert composition.kappas == [1, 2]
    assert composition.label == "era→core [bounds: ibp, operating point: accuracy ≥ core − 0.3 pt]"


def test_an_operating_point_without_validation_data_is_refused_before_training(tmp_path):
    config = parse_config({**EXPERIMENT, "data": {**EXPERIMENT["data"], "validation_size": 0},
                           "compositions": [{"branch": "era", "core": "core",
                                             "operating_point": {}}]}, ExperimentConfig)
    with pytest.raises(ValueError, match="set data.validation_size"):
        run_experiment(config, tmp_path / "never", device="cpu", progress=False)
    assert not (tmp_path / "never").exists()


def test_records_of_another_records_check_are_refused_not_joined(tmp_path):
    """The config does not name the check's code: a run resumed by a release whose records'
    check changed is refused, naming both checks and the remedy, before anything is written;
    the remedy (the records removed) works, and a record of the release before (a text file)
    is read as it wrote it."""
    from robustgate.run_directory import check_records_check

    stamp = tmp_path / "records_check.json"
    check_records_check(tmp_path, "PGD(steps=50) then APGD")
    (tmp_path / "records" / "test").mkdir(parents=True)
    (tmp_path / "records" / "test" / "core.csv").write_text("index,label\n")
    check_records_check(tmp_path, "PGD(steps=50) then APGD")  # the same check resumes
    with pytest.raises(ValueError, match=r"other settings .*records_check: PGD\(steps=50\) then "
                       r"APGD there, PGD\(steps=20\) now\); remove .*records"):
        check_records_check(tmp_path, "PGD(steps=20)")
    stamp.unlink()
    with pytest.raises(ValueError, match="did not record its records' check"):
        check_records_check(tmp_path, "PGD(steps=20)")
    assert not stamp.exists()
    (tmp_path / "records_check.txt").write_text("PGD(steps=50) then APGD\n")  # as it was kept
    check_records_check(tmp_path, "PGD(steps=50) then APGD")
    assert json.loads(stamp.read_text()) == {"records_check": "PGD(steps=50) then APGD"}
    assert not (tmp_path / "records_check.txt").exists()
    shutil.rmtree(tmp_path / "records")  # the remedy: the records recomputed with the new check
    check_records_check(tmp_path, "PGD(steps=20)")
    assert json.loads(stamp.read_text()) == {"records_check": "PGD(steps=20)"}


def test_a_refusal_of_other_settings_names_each_setting_that_differs(tmp_path):
    from robustgate.io import check_settings, record_settings

    path = tmp_path / "settings.json"
    record_settings(path, {"eps": [0.1], "limit": None}, "records")
    with pytest.raises(ValueError, match=r"settings.json: eps: \[0.1\] there, \[0.2\] now; "
                       r"limit: None there, \(not set\) now\); choose another --out"):
        record_settings(path, {"eps": [0.2]}, "records")
    path.write_text("[0.1]")  # not settings at all
    with pytest.raises(ValueError, match=r"settings.json: \[0.1\] there\)"):
        check_settings(path, {"eps": [0.1]}, "records")


def test_a_run_written_by_an_earlier_release_resumes(tmp_path):
    """A stored config or spec without settings added since (their defaults) is the same run;
    a changed value is not."""
    from robustgate.run_directory import check_run_directory

    config = parse_config(EXPERIMENT, ExperimentConfig)
    resolved = json.loads(config.model_dump_json())
    older = json.loads(json.dumps(resolved))
    del older["evaluation"]["certified_radii"], older["models"]["era"]["smoothing"]
    (tmp_path / "config.json").write_text(json.dumps(older))
    check_run_directory(tmp_path, resolved, ExperimentConfig)
    with pytest.raises(ValueError, match="different config"):
        check_run_directory(tmp_path, {**resolved, "seed": 1}, ExperimentConfig)
    with pytest.raises(ValueError, match="different config"):
        check_run_directory(tmp_path, resolved)  # without the schema, raw comparison only
    spec = parse_config(SPEC, TrainSpec)
    out = tmp_path / "model"
    out.mkdir()
    stored = json.loads(spec.model_dump_json(exclude={"smoothing", "bounds"}))
    del stored["validation"]["norm"]
    (out / "spec.json").write_text(json.dumps({"spec": stored, "seed": 0}))
    best = out / "best.safetensors"
    best.write_bytes(b"")
    assert train_model(spec, data("train"), None, 2, out, progress=False) == best
    with pytest.raises(ValueError, match="another training run"):
        train_model(spec, data("train"), None, 2, out, seed=1, progress=False)
