"""Noise-augmented training from a config, validated by certification, and the certify command:
records, summary, resumption, and bad settings refused before anything is written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robustgate.certify import Smooth
from robustgate.cli import main
from robustgate.evaluate import Certificates, certified_metrics, certify_smoothed
from robustgate.losses import make_loss, soft_smoothed_radius
from robustgate.models import MLP
from robustgate.pipeline import certify_command
from robustgate.threat import ThreatModel
from tests.conftest import Linear, interrupt_at_call

TRAIN = {
    "name": "smoothed", "data": {"name": "twogauss", "validation_size": 100},
    "model": {"architecture": "MLP", "arguments": {"in_features": 2, "hidden": [16]}},
    "loss": {"name": "gaussian", "params": {"sigma_train": 0.1}},
    "train": {"epochs": 2, "batch_size": 50, "lr": 0.05},
    "validation": {"eps": 0.05, "limit": 50, "smoothing": {"sigma": 0.1, "n0": 10, "n": 100},
                   "select": {"metric": "certified_accuracy"}},
}


@pytest.fixture(scope="module")
def smoothed_checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("train")
    (directory / "smoothed.yaml").write_text(json.dumps(TRAIN))
    assert main(["train", str(directory / "smoothed.yaml"), "--out", str(directory / "run"),
                 "--quiet"]) == 0
    return directory / "run" / "best.safetensors"


def test_validation_by_certification_chooses_the_best_epoch(smoothed_checkpoint):
    log = [json.loads(line) for line in
           (smoothed_checkpoint.parent / "log.jsonl").read_text().splitlines()]
    validated = [entry["validation"] for entry in log]
    assert all({"certified_accuracy", "certified_robust_inaccuracy", "abstain_rate"}
               <= set(v) for v in validated)
    assert max(v["certified_accuracy"] for v in validated) > 0.5


def test_certify_command_summarizes_resumes_and_says_what_it_certified(
        smoothed_checkpoint, tmp_path, capsys, monkeypatch):
    arguments = ["certify", str(smoothed_checkpoint), "--method", "smoothing", "--sigma", "0.2",
                 "--n0", "10", "--n", "200", "--alpha", "0.01", "--data", "twogauss",
                 "--limit", "30", "--norm", "l2", "--radii", "0", "0.1", "1.0", "--quiet",
                 "--out"]
    out = tmp_path / "certified"
    assert main([*arguments, str(out)]) == 0
    printed = capsys.readouterr().out
    assert "trained at sigma_train 0.1, certified at sigma 0.2" in printed
    assert "| radius | natural (smoothed) |" in printed and "abstain" in printed
    assert "above it, certified for no input at these settings: l2 1" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sigma_train"] == 0.1 and summary["samples"] == 30
    assert summary["metrics"]["l2 1"]["above_max_certifiable"]
    assert summary["metrics"]["l2 1"]["certified_accuracy"] == 0
    certificates = Certificates.read_csv(out / "certificates.csv")
    assert len(certificates) == 30
    (out / "certificates.csv").rename(out / "certificates.partial.csv")
    first = certificates.radii
    kept = Certificates(*(getattr(certificates, name)[:10] for name in
                          ("labels", "predictions", "radii", "p_lower", "seconds")))
    kept.to_csv(out / "certificates.partial.csv")
    assert main([*arguments, str(out)]) == 0
    assert np.array_equal(Certificates.read_csv(out / "certificates.csv").radii, first)
    summary = json.loads((out / "summary.json").read_text())

    def certify_again(*args, **kwargs):
        raise AssertionError("a finished run is read back, not certified again")

    monkeypatch.setattr(certify_command.Smooth, "certify", certify_again)
    assert main([*arguments, str(out)]) == 0
    assert json.loads((out / "summary.json").read_text())["metrics"] == summary["metrics"]
    assert main([*arguments[:5], "0.3", *arguments[6:], str(out)]) == 2
    assert "sigma: 0.2 there, 0.3 now" in capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    (("--sigma", "-1"), "sigma"), (("--n0", "500"), "n0=500 selection draws exceed"),
    (("--alpha", "1.5"), "alpha"), (("--radii", "-0.5"), "--radii: '-0.5' is not a radius"),
])
def test_bad_settings_are_refused_before_anything_is_written(
        smoothed_checkpoint, tmp_path, capsys, change, message):
    arguments = {"--sigma": "0.1", "--n0": "10", "--n": "100", "--alpha": "0.01",
                 "--radii": "0.1"}
    arguments[change[0]] = change[1]
    out = tmp_path / "never"
    flat = [item for pair in arguments.items() for item in pair]
    assert main(["certify", str(smoothed_checkpoint), *flat, "--data", "twogauss", "--quiet",
                 "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_certified_records_count_abstentions_as_inaccurate_and_uncertified():
    certificates = Certificates(labels=[0, 1, 1, 0], predictions=[0, 1, -1, 1],
                                radii=[0.3, 0.05, 0.0, 0.4], p_lower=[0.99, 0.7, 0.5, 0.99],
                                seconds=[0.1] * 4)
    records = certificates.records(ThreatModel("linf", 0.1), [0.1], dimension=4)
    assert records.robust_at(0.1).tolist() == [True, False, False, True]  # needs L2 0.2
    metrics = certified_metrics(records, 0.1)
    assert metrics["certified_accuracy"] == 0.25 and metrics["certified_robust_inaccuracy"] == 0.25
    assert metrics["abstain_rate"] == 0.25
    assert certified_metrics(records, 0.0)["certified_robust_inaccuracy"] == 0.25


def test_certify_smoothed_resumes_to_the_same_certificates(tmp_path, monkeypatch):
    model = Linear(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), torch.tensor([-0.5, 0.5]))
    x = torch.rand(25, 2, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] < 0.5).long()
    smooth = Smooth(model, 2, 0.1)
    whole = certify_smoothed(smooth, x, y, 10, 100, 0.01, chunk=10, progress=False)
    path = tmp_path / "certificates.csv"
    interrupt_at_call(monkeypatch, Smooth, "certify", 2)
    with pytest.raises(KeyboardInterrupt):
        certify_smoothed(smooth, x, y, 10, 100, 0.01, chunk=10, path=path, progress=False)
    assert len(Certificates.read_csv(tmp_path / "certificates.partial.csv")) == 10
    monkeypatch.undo()
    resumed = certify_smoothed(smooth, x, y, 10, 100, 0.01, chunk=10, path=path,
                               progress=False)
    assert np.array_equal(resumed.radii, whole.radii)
    assert not (tmp_path / "certificates.partial.csv").exists()


def test_noise_losses():
    model = MLP(2, 3, (8,))
    x, y = torch.rand(6, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    for name in ("gaussian", "cra"):
        loss = make_loss(name, sigma_train=0.1)(model, x, y)
        assert loss.shape == (6,) and torch.isfinite(loss).all()
        loss.sum().backward()
    with pytest.raises(ValueError, match="sigma_train"):
        make_loss("gaussian", sigma_train=0)
    with pytest.raises(ValueError, match="copies"):
        make_loss("cra", sigma_train=0.1, copies=1)


def test_soft_smoothed_radius_by_hand():
    """Two copies whose softmaxes (temperature 1) are (0.9, 0.1) and (0.7, 0.3): the mean is
    (0.8, 0.2), so the radius is σ/2 · (Φ⁻¹(0.8) − Φ⁻¹(0.2)) = σ · Φ⁻¹(0.8)."""
    logits = torch.log(torch.tensor([[[0.9, 0.1], [0.7, 0.3]]]))
    radius = soft_smoothed_radius(logits, sigma=0.5, temperature=1.0)
    assert float(radius) == pytest.approx(0.5 * 0.8416212, rel=1e-5)


def test_cra_shrinks_the_radius_of_an_inaccurate_sample():
    """On a sample the model gets wrong, CRA's gradient step lowers the soft radius."""
    torch.manual_seed(0)
    model = Linear(torch.tensor([[4.0, 0.0], [-4.0, 0.0]]), torch.tensor([-2.0, 2.0]))
    x, wrong = torch.tensor([[0.9, 0.5]]), torch.tensor([1])
    loss = make_loss("cra", sigma_train=0.1, beta=0.0, copies=64)

    def radius() -> float:
        noisy = x.repeat(256, 1) + 0.1 * torch.randn(256, 2)
        with torch.no_grad():
            return float(soft_smoothed_radius(model(noisy).view(1, 256, 2), 0.1, 4.0))

    before = radius()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(50):
        optimizer.zero_grad()
        loss(model, x, wrong).sum().backward()
        optimizer.step()
    assert radius() < 0.5 * before


CERTIFIED_EXPERIMENT = {
    "name": "certified", "data": {"name": "twogauss", "validation_size": 100},
    "models": {
        "core": {"model": {"architecture": "MLP", "arguments": {"in_features": 2,
                                                                "hidden": [16]}},
                 "train": {"epochs": 2, "batch_size": 50, "lr": 0.05}},
        "noisy": {**{key: TRAIN[key] for key in ("model", "loss", "train")},
                  "smoothing": {"sigma": 0.1, "n0": 10, "n": 200, "alpha": 0.01}},
        "cra": {"model": {**TRAIN["model"], "init": "@noisy"},
                "loss": {"name": "cra", "params": {"sigma_train": 0.1, "copies": 4}},
                "train": {"epochs": 1, "batch_size": 50, "lr": 0.01},
                "smoothing": {"sigma": 0.1, "n0": 10, "n": 200, "alpha": 0.01}},
    },
    "evaluation": {"threat": {"norm": "l2", "eps": 0.05}, "attack": {"steps": 5},
                   "certify_limit": 40, "certified_radii": [0.0, 0.1, 0.5]},
    "compositions": [{"branch": "noisy", "core": "core", "selector": "smoothing"},
                     {"branch": "cra", "core": "core", "selector": "smoothing", "kappa": 1.5}],
    "adaptive": {"limit": 0},
}


def test_a_certified_experiment_end_to_end(tmp_path):
    from robustgate.config import ExperimentConfig, parse_config
    from robustgate.pipeline import run_experiment

    sequential = {"branch": "noisy", "core": "core", "selector": "smoothing", "sequential": True}
    config = parse_config({**CERTIFIED_EXPERIMENT, "compositions": [
        *CERTIFIED_EXPERIMENT["compositions"], sequential]}, ExperimentConfig)
    result = run_experiment(config, tmp_path, device="cpu", progress=False).test
    plain, deployed = result["noisy→core [smoothing]"], result["noisy→core [smoothing: sequential]"]
    assert deployed.extras["sequential"]["model_evaluations_per_input"] <= 210
    assert deployed.extras["stable_l2_radius"] >= plain.extras["stable_l2_radius"]
    assert abs(deployed.selection_rate - plain.selection_rate) <= (
        deployed.extras["sequential"]["differing_selections"] / 40)
    noisy = result["noisy"]
    assert noisy.samples == 40 and noisy.sigma_train == 0.1
    assert set(noisy.by_radius) == {"0", "0.05", "0.1", "0.5"}
    assert noisy.by_radius["0.5"].above_max_certifiable
    composed = result["cra→core [smoothing, κ = 1.5]"]
    assert composed.samples == 40 and composed.extras["stable_l2_radius"] > 2.5 * 0.05
    assert composed.certified_accuracy <= composed.certified_accuracy_if_selector_not_attacked
    assert composed.certified_accuracy <= composed.stable_rate  # a standard core adds none
    report = (tmp_path / "report.md").read_text()
    assert "Certified compositions" in report
    assert "Certified models (randomized smoothing)" in report
    assert (tmp_path / "certificates" / "test" / "cra.csv").exists()


def test_smoothed_models_compose_only_under_the_smoothing_selector(tmp_path):
    from robustgate.config import ExperimentConfig, parse_config
    from robustgate.pipeline import run_experiment

    for composition in ({"branch": "noisy", "core": "core"},
                        {"branch": "core", "core": "core", "selector": "smoothing"}):
        config = parse_config({**CERTIFIED_EXPERIMENT, "compositions": [composition]},
                              ExperimentConfig)
        with pytest.raises(ValueError, match="smoothing selector takes a smoothed branch"):
            run_experiment(config, tmp_path / "never", device="cpu", progress=False)
        assert not (tmp_path / "never").exists()


def test_certify_command_with_bound_propagation(smoothed_checkpoint, tmp_path, capsys):
    from robustgate.evaluate import BoundCertificates

    out = tmp_path / "bounds"
    arguments = ["certify", str(smoothed_checkpoint), "--method", "ibp+crown", "--norm", "linf",
                 "--radii", "0.01", "0.3", "--data", "twogauss", "--limit", "40",
                 "--batch-size", "16", "--quiet", "--out", str(out)]
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    assert "lower bound of every logit difference" in printed
    assert "| radius | natural | certified |" in printed and "abstain" not in printed
    summary = json.loads((out / "summary.json").read_text())
    small, large = summary["metrics"]["linf 0.01"], summary["metrics"]["linf 0.3"]
    assert small["certified_accuracy"] >= large["certified_accuracy"]
    assert small["certified_accuracy"] > 0.5 and small["abstain_rate"] == 0
    header = (out / "certificates.csv").read_text().splitlines()[0]
    assert header == ("index,label,prediction,certified@0.01,certified@0.3,margin@0.01,"
                      "margin@0.3,seconds")
    certificates = BoundCertificates.read_csv(out / "certificates.csv")
    assert len(certificates) == 40
    assert main([*arguments[:-1], str(tmp_path / "no"), "--sigma", "0.1"]) == 2
    assert "--sigma is for --method smoothing" in capsys.readouterr().err


def test_a_bound_certified_experiment_end_to_end(tmp_path):
    from robustgate.config import ExperimentConfig, parse_config
    from robustgate.evaluate import BoundCertificates
    from robustgate.pipeline import run_experiment

    mlp = {"architecture": "MLP", "arguments": {"in_features": 2, "hidden": [16]}}
    config = parse_config({
        "name": "bounded", "data": {"name": "twogauss", "validation_size": 200},
        "models": {
            "core": {"model": mlp, "train": {"epochs": 2, "batch_size": 50, "lr": 0.05}},
            "ibp": {"model": mlp, "loss": {"name": "ibp", "threat": {"eps": 0.1},
                                           "params": {"warmup_epochs": 0, "ramp_epochs": 1}},
                    "train": {"epochs": 3, "batch_size": 50, "lr": 0.05},
                    "bounds": {"methods": ["crown"]}},
        },
        "evaluation": {"threat": {"eps": 0.05}, "attack": {"steps": 5}, "certify_limit": 50},
        "compositions": [
            {"branch": "ibp", "core": "core", "selector": "bounds", "kappa": 2},
            {"branch": "ibp", "core": "core", "selector": "bounds",
             "operating_point": {"max_accuracy_drop": 0.0, "kappas": [1, 1.5, 2]}}],
        "adaptive": {"limit": 0},
    }, ExperimentConfig)
    result = run_experiment(config, tmp_path, device="cpu", progress=False).test
    bounds = result["ibp"].bounds.by_method
    assert set(bounds) == {"ibp", "crown"}
    assert set(bounds["ibp"]) == {"0.05", "0.075", "0.1", "0.125", "0.15"}
    at_eps = bounds["ibp"]["0.05"]
    assert at_eps.certified_accuracy <= at_eps.empirical_robust_accuracy
    composed = result["ibp→core [bounds: ibp, κ = 2]"]
    export = composed.extras["export"]
    assert export["identical"] and export["inputs"] == 1000
    assert composed.certified_accuracy <= composed.stable_rate
    # the operating point: κ chosen on the validation points' certificates, the test curve
    # beside; the count at the chosen κ is the test curve's point
    chosen = result["ibp→core [bounds: ibp, operating point: accuracy ≥ core − 0 pt]"]
    point = chosen.operating_point
    assert [p.kappa for p in point.validation_curve] == [1, 1.5, 2]
    kappa = point.kappa
    assert chosen.kappa == kappa and chosen.extras["export"]["identical"]
    at_kappa, = (p for p in point.test_curve if p.kappa == kappa)
    assert at_kappa.natural_accuracy == chosen.natural_accuracy
    assert at_kappa.robust_accuracy == chosen.certified_accuracy
    if kappa == 2:
        assert chosen.certified_accuracy == composed.certified_accuracy
    validation = BoundCertificates.read_csv(tmp_path / "certificates" / "validation"
                                            / "ibp.ibp.csv")
    assert len(validation) == 200 and sorted(validation.margins) == [0.05, 0.075, 0.1, 0.125,
                                                                      0.15]
    assert not (tmp_path / "certificates" / "validation" / "ibp.crown.csv").exists()
    report = (tmp_path / "report.md").read_text()
    assert "Certified models (bound propagation)" in report
    assert "Operating points of the robustness and bound selectors" in report
    assert f"κ = {kappa:g}; test natural accuracy" in report or "no κ meets" in report


def test_certification_settings_do_not_make_a_trained_model_another(smoothed_checkpoint):
    from robustgate.config import TrainRunConfig, parse_config
    from robustgate.train.run import train_model

    spec = parse_config(TRAIN | {"smoothing": {"sigma": 0.3}, "bounds": {"methods": ["crown"]}},
                        TrainRunConfig)
    before = smoothed_checkpoint.stat().st_mtime_ns
    again = train_model(spec, (torch.rand(4, 2), torch.zeros(4, dtype=torch.int64)), None, 2,
                        smoothed_checkpoint.parent, progress=False)
    assert again == smoothed_checkpoint and again.stat().st_mtime_ns == before


def test_the_certificate_methods_are_read_from_one_registry():
    """The config's bound methods, ``certify --method`` and the bound selector's count all read
    ``registry.CERTIFICATE_METHODS``."""
    from robustgate.certify import BOUND_METHODS
    from robustgate.cli import build_parser
    from robustgate.config import BoundSettings, CompositionSettings, parse_config
    from robustgate.registry import CERTIFICATE_METHODS

    names = CERTIFICATE_METHODS.names()
    commands = next(action for action in build_parser()._actions if action.dest == "command")
    method = next(action for action in commands.choices["certify"]._actions
                  if action.dest == "method")
    assert list(method.choices) == names and "smoothing" in names
    assert tuple(name for name in names
                                  if CERTIFICATE_METHODS[name].bound_propagation) == BOUND_METHODS
    assert BoundSettings(methods=list(BOUND_METHODS)).methods[0] == "ibp"
    with pytest.raises(ValueError, match="'smoothing' is no bound-propagation method"):
        parse_config({"branch": "a", "core": "b", "selector": "bounds",
                      "bound_method": "smoothing"}, CompositionSettings)
    with pytest.raises(ValueError, match="unknown certificate method 'exact'"):
        parse_config({"methods": ["exact"]}, BoundSettings)
    assert CERTIFICATE_METHODS["ibp"].monotone and not CERTIFICATE_METHODS["crown"].monotone
