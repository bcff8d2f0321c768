"""The noise-augmentation study against known answers, and as a resumable command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from robustgate.cli import main
from robustgate.config import (
    DisksSettings,
    GaussiansSettings,
    MnistNoiseSettings,
    NoiseStudyConfig,
    OptimizerSettings,
    quick_noise_study,
)
from robustgate.data import Dataset
from robustgate.evaluate.statistics import clopper_pearson
from robustgate.study import noise
from robustgate.study.noise import disk_radius_after_filtering, run_noise_study, smoothed


@pytest.mark.parametrize("radius, sigma", [(10, 4), (10, 8), (20, 11), (6, 5)])
def test_one_filtered_disk_is_the_disk_of_the_noncentral_chi_square_radius(radius, sigma):
    size = 160
    rows, columns = np.mgrid[0:size, 0:size] + 0.5
    distance = np.hypot(rows - size / 2, columns - size / 2)
    region = smoothed(distance <= radius, sigma)
    expected = disk_radius_after_filtering(radius, sigma)
    assert (distance[region] <= expected + 1).all()
    assert (region[distance <= expected - 1]).all()
    if radius < sigma * math.sqrt(2 * math.log(2)):
        assert expected == 0 and not region.any()


def test_a_disk_vanishes_below_sigma_times_root_two_log_two():
    sigma = 10.0
    threshold = sigma * math.sqrt(2 * math.log(2))
    assert disk_radius_after_filtering(threshold * 0.98, sigma) == 0
    assert disk_radius_after_filtering(threshold * 1.05, sigma) > 0


def test_equal_covariance_gaussians_do_not_depend_on_the_training_noise(tmp_path):
    """The noisy data's Bayes rule is one hyperplane at every σ_train: every Δ lies inside the
    95% interval of Δ at σ_train = 0; on clusters packed closer than σ, noise helps."""
    config = quick_noise_study(["gaussians"])
    summary = run_noise_study(config, tmp_path, progress=False)["summaries"]["gaussians"]
    equal = next(row for row in summary if row["panel"] == "equal")
    low, high = clopper_pearson(round(equal["error_at_zero"] * equal["samples"]),
                                equal["samples"])
    assert all(low <= error <= high for error in equal["mean_error"])
    clusters = next(row for row in summary if row["panel"] == "clusters")
    assert clusters["verdict"] == "helped" and clusters["best_sigma_train"] > 0


def test_the_study_resumes_and_refuses_another_config(tmp_path):
    config = NoiseStudyConfig(name="tiny", problems=["disks"], disks=DisksSettings(
        size=60, radius=6, gaps=[0.0, 10.0], sigmas=[5.0], sigma_trains=[0.0, 2.0, 5.0],
        layouts=3, tries=500))
    first = run_noise_study(config, tmp_path, progress=False)
    results = tmp_path / "results" / "disks.json"
    cells = json.loads(results.read_text())
    kept = dict(list(cells.items())[:2])
    results.write_text(json.dumps(kept))
    again = run_noise_study(config, tmp_path, progress=False)
    assert again["summaries"] == first["summaries"]
    assert json.loads(results.read_text()) == cells
    other = config.model_copy(update={"seed": 1})
    with pytest.raises(ValueError, match="different config"):
        run_noise_study(other, tmp_path, progress=False)


def test_a_rerun_with_another_problem_adds_it_to_the_study(tmp_path):
    """Problems studied apart in one directory make one study: the new problem is run, the
    earlier one is kept, read back and reported; other settings must still be the same."""
    config = NoiseStudyConfig(
        name="tiny", problems=["disks"],
        disks=DisksSettings(size=60, radius=6, gaps=[0.0], sigmas=[5.0],
                            sigma_trains=[0.0, 5.0], layouts=2, tries=200),
        gaussians=GaussiansSettings(sigmas=[0.1], ratios=[0.0, 1.0], n_train=200, n_test=100,
                                    votes=10, hidden=[8],
                                    train=OptimizerSettings(epochs=1, batch_size=50)))
    first = run_noise_study(config, tmp_path, progress=False)["summaries"]
    disks = (tmp_path / "results" / "disks.json").read_text()
    both = run_noise_study(config.model_copy(update={"problems": ["gaussians"]}), tmp_path,
                           progress=False)["summaries"]
    assert set(both) == {"disks", "gaussians"} and both["disks"] == first["disks"]
    assert (tmp_path / "results" / "disks.json").read_text() == disks
    assert json.loads((tmp_path / "config.json").read_text())["problems"] == ["disks",
                                                                              "gaussians"]
    report = (tmp_path / "report.md").read_text()
    assert "## disks" in report and "## gaussians" in report
    with pytest.raises(ValueError, match="different config"):
        run_noise_study(config.model_copy(update={"problems": ["gaussians"], "seed": 1}),
                        tmp_path, progress=False)


def test_study_command_quick_writes_the_report(tmp_path, capsys):
    assert main(["study", "noise", "disks", "--quick", "--out", str(tmp_path), "--quiet"]) == 0
    report = (tmp_path / "report.md").read_text()
    assert "## disks" in report and "## Recommendation" in report
    assert "training noise" in report
    assert (tmp_path / "report.html").exists()
    assert main(["study", "noise", "cubes", "--quick", "--out", str(tmp_path / "x")]) == 2
    assert "unknown problems ['cubes']" in capsys.readouterr().err


def test_the_mnist_problem_runs_and_an_interrupted_certification_resumes(tmp_path,
                                                                         monkeypatch):
    """The ``mnist`` problem on a stand-in for MNIST (bright or dark 28×28 images, 10 classes):
    one cell per σ and σ_train, Δ and certified accuracy in [0, 1]; a cell interrupted during
    its certification resumes from its partial certificates and ends as an uninterrupted one."""
    generator = torch.Generator().manual_seed(0)

    def stand_in(name, split, **_):
        count = 300 if split == "train" else 40
        y = torch.arange(count) % 10
        x = (y.view(-1, 1, 1, 1) / 10 + 0.05 * torch.rand(count, 1, 28, 28,
                                                           generator=generator)).clamp(0, 1)
        return Dataset(x.float(), y, 10, (1, 28, 28), name, split)

    monkeypatch.setattr(noise, "load_dataset", stand_in)
    config = NoiseStudyConfig(name="tiny", problems=["mnist"], mnist=MnistNoiseSettings(
        sigmas=[0.25], ratios=[0.0, 1.0], limit=40, votes=10, certify_limit=8, n=200,
        train=OptimizerSettings(epochs=1, batch_size=50)))
    straight = run_noise_study(config, tmp_path / "straight", progress=False)
    cells = json.loads((tmp_path / "straight" / "results" / "mnist.json").read_text())
    assert sorted(cells) == ["mnist sigma=0.25 ratio=0", "mnist sigma=0.25 ratio=1"]
    assert all(0 <= cell["error"] <= 1 and 0 <= cell["certified_accuracy"] <= 1
               for cell in cells.values())
    real = noise.certify_smoothed

    def interrupted(*args, path, **kwargs):
        smooth, x, y, *rest = args
        real(smooth, x[:4], y[:4], *rest, **kwargs).to_csv(path.with_suffix(".partial.csv"))
        raise KeyboardInterrupt  # after the first 4

    monkeypatch.setattr(noise, "certify_smoothed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_noise_study(config, tmp_path / "resumed", progress=False)
    partials = list((tmp_path / "resumed" / "certificates").rglob("*.partial.csv"))
    assert len(partials) == 1 and len(partials[0].read_text().splitlines()) == 5
    monkeypatch.setattr(noise, "certify_smoothed", real)
    resumed = run_noise_study(config, tmp_path / "resumed", progress=False)
    assert resumed["summaries"] == straight["summaries"]
    assert json.loads((tmp_path / "resumed" / "results" / "mnist.json").read_text()) == cells
    assert not list((tmp_path / "resumed" / "certificates").rglob("*.partial.csv"))
