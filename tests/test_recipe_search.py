"""Operating points over training: the statistics of the choice, the choice rule, the search's
config, data augmentation, and a whole search on a two-dimensional problem whose best recipe is
known."""

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import checkpoint_weights, interrupt_at_call, interrupt_training_after
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest

from robustgate.config import ExperimentConfig, SearchSettings, TrainSpec, parse_config
from robustgate.data import load_dataset
from robustgate.evaluate.operating_points import choose_recipe, validation_parts
from robustgate.evaluate.results import CurvePoint, SearchResult
from robustgate.evaluate.statistics import (
    accuracy_drop_upper_bound,
    confirmation_size,
    mcnemar_p_value,
)
from robustgate.models import load_checkpoint
from robustgate.pipeline import experiment, run_experiment
from robustgate.train.augmentation import make_augmentation
from robustgate.train.run import train_model

# -- statistics ------------------------------------------------------------------------------


def test_the_drop_bound_without_discordant_inputs_is_closed_form():
    # no input differs: the bound is the one-sided Clopper–Pearson upper bound on 0 of n at
    # level (1 − confidence)/2, i.e. 1 − (0.025)^(1/n)
    for samples in (10, 400, 3000):
        assert accuracy_drop_upper_bound(0, 0, samples, 0.95) == pytest.approx(
            1 - 0.025 ** (1 / samples), rel=1e-9)


def test_the_drop_bound_moves_the_right_way():
    base = accuracy_drop_upper_bound(10, 5, 1000)
    assert accuracy_drop_upper_bound(11, 5, 1000) > base  # more lost: larger
    assert accuracy_drop_upper_bound(10, 6, 1000) < base  # more gained: smaller
    assert accuracy_drop_upper_bound(10, 5, 1000, 0.99) > base  # more confident: larger
    assert base > (10 - 5) / 1000  # above the point estimate


def test_the_drop_bound_covers_the_true_drop():
    """Simulated paired outcomes with a known drop: the bound falls below it in at most 5% of
    the trials (with margin for the simulation's own error)."""
    rng = np.random.default_rng(0)
    lost_rate, gained_rate, samples, trials = 0.02, 0.012, 800, 4000
    counts = rng.multinomial(samples, [lost_rate, gained_rate, 1 - lost_rate - gained_rate],
                             size=trials)
    missed = sum(accuracy_drop_upper_bound(int(lost), int(gained), samples) < lost_rate
                 - gained_rate for lost, gained, _ in counts)
    assert missed / trials <= 0.05


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 2000), st.data())
def test_the_drop_bound_is_a_bound_on_the_observed_drop(samples, data):
    lost = data.draw(st.integers(0, samples))
    gained = data.draw(st.integers(0, samples - lost))
    bound = accuracy_drop_upper_bound(lost, gained, samples)
    assert (lost - gained) / samples <= bound <= 1


def test_the_confirmation_size_is_the_fewest_points_that_can_confirm():
    for drop in (0.001, 0.005, 0.03):
        size = confirmation_size(drop)
        assert accuracy_drop_upper_bound(0, 0, size) <= drop
        assert accuracy_drop_upper_bound(0, 0, size - 1) > drop
    assert confirmation_size(0.001) == 3688
    with pytest.raises(ValueError, match="drop in"):
        confirmation_size(0.0)


def test_mcnemar_p_values_are_the_exact_binomial_tests():
    assert mcnemar_p_value(5, 0, "greater") == pytest.approx(1 / 32)
    assert mcnemar_p_value(5, 0) == pytest.approx(1 / 16)
    assert mcnemar_p_value(0, 0) == 1.0
    assert mcnemar_p_value(30, 12) == pytest.approx(binomtest(30, 42).pvalue)


# -- the choice rule -------------------------------------------------------------------------


def point(kappa, natural, robust, lost=0, gained=0, samples=1000):
    return CurvePoint(kappa, natural, robust, 0.9, lost, gained, samples)


def test_the_most_robust_confirmed_pair_wins():
    choosing = {"a": [point(1, 0.99, 0.95), point(2, 0.995, 0.90)],
                "b": [point(1, 0.99, 0.93), point(2, 0.995, 0.91)]}
    confirming = {"a": [point(1, 0.99, 0.95, lost=1), point(2, 0.99, 0.9)],
                  "b": [point(1, 0.99, 0.93), point(2, 0.99, 0.9)]}
    choice = choose_recipe(choosing, confirming, 0.995, 0.01)
    assert choice.chosen == "a" and choice.candidates["a"].kappa == 1
    assert choice.tried == 2 and choice.pairs == 4 and choice.confirmed == 2
    assert choice.pair_confidence == pytest.approx(0.975)  # Bonferroni over the two


def test_a_pair_the_confirming_points_reject_is_not_chosen():
    choosing = {"robust_and_wrong": [point(1, 0.99, 0.97)], "era": [point(1, 0.99, 0.94)]}
    confirming = {"robust_and_wrong": [point(1, 0.98, 0.96, lost=15)],
                  "era": [point(1, 0.99, 0.94, lost=1, gained=1)]}
    choice = choose_recipe(choosing, confirming, 0.99, 0.015)
    assert not choice.candidates["robust_and_wrong"].confirming.accepted
    assert choice.chosen == "era"


def test_without_an_accepted_pair_the_closest_is_named():
    choosing = {"a": [point(1, 0.99, 0.97)], "b": [point(1, 0.99, 0.94)]}
    confirming = {"a": [point(1, 0.98, 0.96, lost=30)], "b": [point(1, 0.98, 0.94, lost=20)]}
    choice = choose_recipe(choosing, confirming, 0.99, 0.01)
    assert choice.chosen is None and choice.closest == "b"
    # nothing meets the target on the choosing points: the most accurate one is the closest
    missing = choose_recipe({"a": [point(1, 0.90, 0.9)], "b": [point(1, 0.95, 0.9)]},
                            {"a": [point(1, 0.9, 0.9)], "b": [point(1, 0.9, 0.9)]}, 0.99, 0.01)
    assert missing.chosen is None and missing.closest == "b"
    assert missing.confirmed == 0


# -- configuration ---------------------------------------------------------------------------

MLP = {"architecture": "MLP", "arguments": {"in_features": 2, "hidden": [64, 64, 64]}}
TRAIN = {"epochs": 10, "batch_size": 10, "lr": 0.03, "weight_decay": 0.0001}
THREAT = {"norm": "linf", "eps": 0.1}
ATTACK = {"steps": 10, "relative_step": 0.25}
SEARCH = {
    "name": "recipe", "core": "core", "max_accuracy_drop": 0.015, "choose_size": 200,
    "kappas": [1, 2],
    "recipe": {"model": MLP, "loss": {"name": "era", "threat": THREAT, "attack": ATTACK},
               "train": TRAIN},
    # TRADES is robust and wrong on the small class of the three-Gaussian problem; ERA is not
    "grid": {"loss": [
        {"name": "trades", "threat": THREAT, "params": {"beta_trades": 6.0}, "attack": ATTACK},
        {"name": "era", "threat": THREAT, "params": {"beta": 0.2, "beta_trades": 6.0},
         "attack": ATTACK}]},
}
EXPERIMENT = {
    "name": "search-2d", "seed": 0,
    "data": {"name": "threegauss", "n": 2000, "validation_size": 1000},
    "models": {"core": {"model": MLP, "loss": {"name": "standard"}, "train": TRAIN}},
    "evaluation": {"threat": THREAT, "limit": 1000, "autoattack_check": 0,
                   "attack": {"steps": 20, "relative_step": 0.1, "target_classes": 2}},
    "adaptive": {"limit": 0},
    "searches": [SEARCH],
}


def test_the_grid_makes_every_candidate_and_refuses_a_bad_key():
    search = parse_config({**SEARCH, "grid": {"loss.params.beta": [0.5, 1.0],
                                              "augmentation": [None, {"name": "affine"}]}},
                          SearchSettings)
    candidates = search.candidates()
    assert [overrides for overrides, _ in candidates] == [
        {"loss.params.beta": b, "augmentation": a}
        for b in (0.5, 1.0) for a in (None, {"name": "affine"})]
    assert candidates[1][1].augmentation.name == "affine"
    assert candidates[2][1].loss.params == {"beta": 1.0}
    assert candidates[0][1].loss.name == "era"  # the recipe's, where the grid is silent
    with pytest.raises(ValueError, match="unknown key 'train.epochz'"):
        parse_config({**SEARCH, "grid": {"train.epochz": [1]}}, SearchSettings)
    with pytest.raises(ValueError, match="at least one value"):
        parse_config({**SEARCH, "grid": {"train.epochs": []}}, SearchSettings)
    with pytest.raises(ValueError, match="bounds settings"):
        parse_config({**SEARCH, "selector": "bounds"}, SearchSettings)
    with pytest.raises(ValueError, match="max_accuracy_drop"):
        parse_config({**SEARCH, "max_accuracy_drop": 0}, SearchSettings)


def test_a_validation_split_too_small_is_refused_with_the_size_it_needs(tmp_path):
    search = parse_config({**SEARCH, "max_accuracy_drop": 0.001}, SearchSettings)
    validation = (torch.rand(1000, 2), torch.zeros(1000, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 3688.*validation_size to at least 3888"):
        validation_parts(search, validation, 0)
    config = parse_config({**EXPERIMENT, "searches": [{**SEARCH, "max_accuracy_drop": 0.001}]},
                          ExperimentConfig)
    with pytest.raises(ValueError, match="at least 3688"):
        run_experiment(config, tmp_path / "run", device="cpu", progress=False)
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_the_two_validation_parts_are_disjoint_random_and_in_order():
    search = parse_config({**SEARCH, "choose_size": 300, "confirm_size": 500}, SearchSettings)
    x = torch.arange(1000.0).unsqueeze(1)
    y = (torch.arange(1000) >= 500).long()  # ordered by class, as a synthetic split is
    (choose_x, choose_y), (confirm_x, confirm_y) = validation_parts(search, (x, y), 0)
    assert len(choose_y) == 300 and len(confirm_y) == 500
    assert not set(choose_x[:, 0].tolist()) & set(confirm_x[:, 0].tolist())
    assert torch.all(choose_x[1:, 0] > choose_x[:-1, 0])
    assert 0.3 < choose_y.float().mean() < 0.7  # both classes in the choosing part


# -- data augmentation -----------------------------------------------------------------------

IMAGES = {
    "model": {"architecture": "SmallCNN",
              "arguments": {"channels": [2, 4], "hidden": 8, "input_size": 16}},
    "loss": {"name": "standard"},
    "train": {"epochs": 2, "batch_size": 20, "lr": 0.05},
    "augmentation": {"name": "affine", "degrees": 15},
}


def images():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(100, 1, 16, 16, generator=generator)
    return x, (x.mean((1, 2, 3)) > 0.5).long()


def test_augmentation_is_seeded_resumable_and_recorded(tmp_path, monkeypatch):
    spec = parse_config(IMAGES, TrainSpec)
    straight = train_model(spec, images(), None, 2, tmp_path / "straight", progress=False)
    plain = train_model(parse_config({**IMAGES, "augmentation": None}, TrainSpec), images(), None,
                        2, tmp_path / "plain", progress=False)
    interrupt_training_after(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        train_model(spec, images(), None, 2, tmp_path / "resumed", progress=False)
    monkeypatch.undo()
    resumed = train_model(spec, images(), None, 2, tmp_path / "resumed", progress=False)
    assert torch.equal(checkpoint_weights(straight), checkpoint_weights(resumed))
    # augmentation changed training
    assert not torch.equal(checkpoint_weights(straight), checkpoint_weights(plain))
    metadata = load_checkpoint(straight)[1]
    assert metadata["augmentation"]["name"] == "affine"
    assert metadata["augmentation"]["degrees"] == 15


def test_augmentation_stays_in_the_domain_and_refuses_what_does_not_fit():
    augment = make_augmentation(parse_config(IMAGES, TrainSpec).augmentation, (1, 16, 16))
    x = images()[0]
    moved = augment(x)
    assert moved.shape == x.shape and moved.min() >= 0 and moved.max() <= 1
    assert not torch.equal(moved, x)
    crop = parse_config({**IMAGES, "augmentation": {"name": "crop_flip", "padding": 2}},
                        TrainSpec).augmentation
    assert make_augmentation(crop, (3, 8, 8))(torch.rand(4, 3, 8, 8)).shape == (4, 3, 8, 8)
    policy = parse_config({**IMAGES, "augmentation": {"name": "randaugment"}},
                          TrainSpec).augmentation
    with pytest.raises(ValueError, match="RGB images.*1 channel"):
        make_augmentation(policy, (1, 8, 8))
    with pytest.raises(ValueError, match="shape \\(2,\\)"):
        make_augmentation(crop, (2,))
    with pytest.raises(ValueError, match="scale"):
        parse_config({**IMAGES, "augmentation": {"name": "affine", "scale": [1.2, 0.8]}},
                     TrainSpec)


# -- a whole search ---------------------------------------------------------------------------


def test_the_search_picks_the_recipe_without_robust_inaccurate_inputs(tmp_path, monkeypatch):
    """Three Gaussians at eps∞ = 0.1: TRADES is robust and wrong on the small class, ERA is
    not. Both meet the target on the choosing points; the confirming points reject TRADES (its
    composition loses the small class to the core) and ERA is chosen. Run again with the test
    labels scrambled (the trained models kept), the choice is the same: test data never enters
    it."""
    config = parse_config(EXPERIMENT, ExperimentConfig)
    result = run_experiment(config, tmp_path / "run", device="cpu", progress=False)
    search = result.searches["recipe"]
    choice = search.choice
    assert [c.overrides["loss"]["name"] for c in search.candidates] == ["trades", "era"]
    assert choice.chosen == "1" and choice.tried == 2 and choice.pairs == 4
    trades, era = choice.candidates["0"], choice.candidates["1"]
    assert not trades.confirming.accepted
    assert trades.confirming.drop_upper_bound > 0.015 >= era.confirming.drop_upper_bound
    assert search.branches["test"]["0"]["robust_inaccuracy"] > 0.01
    assert search.branches["test"]["1"]["robust_inaccuracy"] < 0.005
    test = search.test
    assert test.candidate == "1" and test.chosen
    assert test.natural_accuracy >= test.core_natural_accuracy - 0.015
    stored = json.loads((tmp_path / "run" / "searches" / "recipe" / "result.json").read_text())
    assert stored["choice"] == choice.to_json()
    assert SearchResult.from_json(stored) == search
    report = (tmp_path / "run" / "report.md").read_text()
    assert "## Operating point over training: recipe" in report
    assert "2 candidates tried (4 pairs of recipe and κ)" in report
    assert "exact McNemar test, two-sided, p = " in report
    assert "data:image/png;base64," in (tmp_path / "run" / "report.html").read_text()

    again = tmp_path / "scrambled"
    shutil.copytree(tmp_path / "run" / "models", again / "models")
    for candidate in ("0", "1"):
        shutil.copytree(tmp_path / "run" / "searches" / "recipe" / "candidates" / candidate
                        / "model", again / "searches" / "recipe" / "candidates" / candidate
                        / "model")
    real_load = load_dataset

    def scrambled_test(*args, split, **kwargs):
        dataset = real_load(*args, split=split, **kwargs)
        if split == "test":
            return dataclasses.replace(dataset, y=(dataset.y + 1) % 3)
        return dataset

    monkeypatch.setattr(experiment, "load_dataset", scrambled_test)
    rerun = run_experiment(config, again, device="cpu", progress=False).searches["recipe"]
    assert rerun.choice == choice
    assert rerun.test.natural_accuracy != test.natural_accuracy


def test_a_search_for_the_bound_selector_counts_certificates(tmp_path):
    """The bound selector's search: candidates certified by IBP on the choosing, confirming and
    certified test points at every radius the κ sweep needs, the count certified."""
    mlp = {"architecture": "MLP", "arguments": {"in_features": 2, "hidden": [16]}}
    threat = {"eps": 0.1}
    config = parse_config({
        "name": "bounded-search", "data": {"name": "twogauss", "validation_size": 300},
        "models": {"core": {"model": mlp, "train": {"epochs": 2, "batch_size": 50,
                                                     "lr": 0.05}}},
        "evaluation": {"threat": {"eps": 0.05}, "attack": {"steps": 5}, "certify_limit": 80,
                       "autoattack_check": 0},
        "adaptive": {"limit": 0},
        "searches": [{
            "name": "certified", "core": "core", "selector": "bounds", "kappas": [1, 2],
            "max_accuracy_drop": 0.05, "choose_size": 100,
            "recipe": {"model": mlp, "loss": {"name": "ibp", "threat": threat,
                                              "params": {"warmup_epochs": 0, "ramp_epochs": 1}},
                       "train": {"epochs": 2, "batch_size": 50, "lr": 0.05},
                       "bounds": {"methods": ["ibp"]}},
            "grid": {"loss.name": ["ibp", "cert_era"]},
        }],
    }, ExperimentConfig)
    result = run_experiment(config, tmp_path, device="cpu", progress=False)
    search = result.searches["certified"]
    assert search.selector == "bounds"
    for name in ("0", "1"):
        for split, size in (("choose", 100), ("confirm", 200), ("test", 80)):
            curve = search.curves[split][name]
            assert [p.kappa for p in curve] == [1, 2]
            assert all(p.samples == size for p in curve)
            assert all(p.robust_accuracy <= p.natural_accuracy for p in curve)
        certificates = tmp_path / "searches" / "certified" / "candidates" / name / "certificates"
        assert (certificates / "confirm.ibp.csv").exists()
    choice = search.choice
    assert choice.tried == 2 and choice.pairs == 4
    # the core has no certificate: it adds natural accuracy only, so nothing is certified
    # beyond the branch's own certificates
    assert search.core["test"]["robust_accuracy"] == 0
    assert search.test.samples == 80
    assert "certified (test)" in (tmp_path / "report.md").read_text()


def test_a_search_for_the_smoothing_selector_counts_certificates(tmp_path):
    """The smoothing selector's search over cra's β: each candidate certified once per split,
    counted at every κ with the stability margin of the deployed decision rule."""
    mlp = {"architecture": "MLP", "arguments": {"in_features": 2, "hidden": [16]}}
    smoothing = {"sigma": 0.25, "n0": 10, "n": 200, "alpha": 0.01, "batch_size": 200}
    search = {
        "name": "smoothed", "core": "core", "selector": "smoothing", "kappas": [1, 2],
        "max_accuracy_drop": 0.05, "choose_size": 100,
        "recipe": {"model": mlp, "loss": {"name": "cra", "params": {"sigma_train": 0.25,
                                                                    "copies": 4}},
                   "train": {"epochs": 2, "batch_size": 50, "lr": 0.05},
                   "smoothing": smoothing},
        "grid": {"loss.params.beta": [0.5, 2.0]},
    }
    experiment_config = {
        "name": "smoothed-search", "data": {"name": "twogauss", "validation_size": 300},
        "models": {"core": {"model": mlp, "train": {"epochs": 2, "batch_size": 50,
                                                     "lr": 0.05}}},
        "evaluation": {"threat": {"norm": "l2", "eps": 0.05}, "attack": {"steps": 5},
                       "certify_limit": 60, "autoattack_check": 0},
        "adaptive": {"limit": 0}, "searches": [search]}
    result = run_experiment(parse_config(experiment_config, ExperimentConfig), tmp_path,
                            device="cpu", progress=False).searches["smoothed"]
    for name in ("0", "1"):
        for split, size in (("choose", 100), ("confirm", 200), ("test", 60)):
            curve = result.curves[split][name]
            assert [p.samples for p in curve] == [size, size]
            # κ = 2 selects fewer inputs than κ = 1, from the same certificates
            assert curve[1].selection_rate <= curve[0].selection_rate
        assert (tmp_path / "searches" / "smoothed" / "candidates" / name / "certificates"
                / "confirm.csv").exists()
    assert result.choice.tried == 2
    with pytest.raises(ValueError, match="smoothing selector takes smoothed branches"):
        parse_config({**search, "selector": "robustness"}, SearchSettings)


def test_a_choice_that_keeps_the_target_only_by_giving_up_robustness_is_flagged():
    choosing = {"a": [point(1, 0.97, 0.90), point(3, 0.99, 0.02)]}
    confirming = {"a": [point(1, 0.97, 0.9, lost=20), point(3, 0.99, 0.02)]}
    choice = choose_recipe(choosing, confirming, 0.99, 0.01)
    assert choice.chosen == "a" and choice.candidates["a"].kappa == 3
    assert choice.robustness_given_up.robust_accuracy == 0.90
    assert choice.robustness_given_up.share_kept == pytest.approx(0.02 / 0.90)
    kept = choose_recipe({"a": [point(1, 0.99, 0.90)]}, {"a": [point(1, 0.99, 0.9)]}, 0.99, 0.01)
    assert kept.robustness_given_up is None


def test_a_sampled_search_resumes_its_optuna_study(tmp_path, monkeypatch):
    """``trials``: Optuna samples that many candidates of the grid; interrupted, the search
    resumes with the trials it finished (kept in SQLite) and ends with ``trials`` of them."""
    import optuna

    from robustgate.pipeline import search as search_module

    mlp = {"architecture": "MLP", "arguments": {"in_features": 2, "hidden": [8]}}
    config = parse_config({
        "name": "sampled", "data": {"name": "twogauss", "validation_size": 300, "n": 500},
        "models": {"core": {"model": mlp, "train": {"epochs": 1, "batch_size": 50,
                                                     "lr": 0.05}}},
        "evaluation": {"threat": {"eps": 0.05}, "attack": {"steps": 3}, "autoattack_check": 0},
        "adaptive": {"limit": 0},
        "searches": [{
            "name": "sampled", "core": "core", "max_accuracy_drop": 0.05, "choose_size": 100,
            "trials": 3,
            "recipe": {"model": mlp, "loss": {"name": "trades", "threat": {"eps": 0.05},
                                              "attack": {"steps": 2}},
                       "train": {"epochs": 1, "batch_size": 50, "lr": 0.05}},
            "grid": {"train.lr": [0.01, 0.03, 0.1], "loss.params.beta_trades": [1.0, 6.0]},
        }],
    }, ExperimentConfig)
    calls = interrupt_at_call(monkeypatch, search_module, "train_model", 2)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(config, tmp_path, device="cpu", progress=False)
    monkeypatch.undo()
    result = run_experiment(config, tmp_path, device="cpu", progress=False).searches["sampled"]
    study = optuna.load_study(study_name="sampled",
                              storage=f"sqlite:///{tmp_path / 'searches/sampled/study.db'}")
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 3
    sampled = {str(t.user_attrs["candidate"]) for t in complete}
    assert {c.name for c in result.candidates} == sampled
    assert result.grid_size == 6 and result.choice.tried == len(sampled)
    # the trial finished before the interruption (train_model's first argument: its spec) is
    # among the study's three
    candidates = config.searches[0].candidates()
    assert any(candidates[int(name)][1] == calls[0] for name in sampled)
