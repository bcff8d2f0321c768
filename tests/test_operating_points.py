"""Operating points of the robustness and bound selectors, the sampling error of a figure, and
records at several radii by bisection."""

import functools
import json

import numpy as np
import pytest
import torch
from conftest import exact_radius, random_linear

from robustgate.attacks import check_robustness, make_attack
from robustgate.cli import main
from robustgate.evaluate import Records, evaluate_model
from robustgate.evaluate import records as records_module
from robustgate.evaluate.operating_points import (
    choose_operating_point,
    operating_curve,
    robustness_given_up,
    within_accuracy_drop,
)
from robustgate.evaluate.results import CurvePoint, OperatingPoint
from robustgate.evaluate.sound_count import Selection
from robustgate.evaluate.statistics import clopper_pearson, paired_lower
from robustgate.registry import SELECTOR_KINDS
from robustgate.selector_kinds import sweep_radii
from robustgate.threat import ThreatModel


def test_sweep_radii_cover_selection_stability_and_the_inner_ball():
    assert sweep_radii(0.1, [1.0]) == [0.1, 0.2]
    assert sweep_radii(0.1, [1.0, 1.5, 2.0]) == [0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
    with pytest.raises(ValueError, match="kappa"):
        sweep_radii(0.1, [0.5])


def test_the_bound_selector_is_counted_at_its_selection_and_stability_radii_only():
    assert SELECTOR_KINDS["bounds"].selection_radii(0.1, 2.0) == {2 * 0.1, 3 * 0.1}
    assert SELECTOR_KINDS["robustness"].selection_radii(0.1, 2.0) == {1 * 0.1, 2 * 0.1, 3 * 0.1}
    with pytest.raises(ValueError, match="'entropy'"):
        SELECTOR_KINDS["entropy"].selection_radii(0.1, 1.0)
    with pytest.raises(ValueError, match="kappa"):
        SELECTOR_KINDS["bounds"].selection_radii(0.1, 0.9)


def records_from_radius(labels, predictions, radius, radii):
    return Records(labels, predictions, {r: radius > r for r in radii})


def branch_and_core(seed, n, radii, sure_above, sure, unsure, core_robust_rate):
    """Three-class records: a branch robust up to an exponential radius, right with probability
    ``sure`` above ``sure_above`` and ``unsure`` below, and a core right 99% of the time and
    robust at 0.1 on ``core_robust_rate`` of the inputs. Returns the branch's radii and
    correctness, the core's correctness, and both records."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, n)
    branch_radius = rng.exponential(0.2, n)
    branch_right = rng.random(n) < np.where(branch_radius > sure_above, sure, unsure)
    branch = records_from_radius(labels, np.where(branch_right, labels, (labels + 1) % 3),
                                 branch_radius, radii)
    core_right = rng.random(n) < 0.99
    core = Records(labels, np.where(core_right, labels, (labels + 2) % 3),
                   {0.1: rng.random(n) < core_robust_rate})
    return branch_radius, branch_right, core_right, branch, core


def test_a_larger_kappa_moves_the_composition_towards_the_core():
    # the branch is wrong mostly near its boundary (small radius); the core is right more often
    # but rarely robust
    *_, branch, core = branch_and_core(0, 2000, sweep_radii(0.1, [1, 1.5, 2, 3]), 0.3, 0.995,
                                       0.9, 0.2)
    curve = operating_curve(branch, core, 0.1, [1, 1.5, 2, 3])
    natural = [point.natural_accuracy for point in curve]
    robust = [point.robust_accuracy for point in curve]
    rates = [point.selection_rate for point in curve]
    assert rates == sorted(rates, reverse=True) and robust == sorted(robust, reverse=True)
    assert natural[-1] > natural[0]
    core_accuracy = float(core.accurate.mean())
    best = choose_operating_point(curve, core_accuracy)  # no target: the most robust
    assert best.kappa == 1 and best.meets_target
    within = choose_operating_point(curve, core_accuracy, max_accuracy_drop=0.01)
    meeting = [p for p in curve if p.natural_accuracy >= core_accuracy - 0.01]
    assert within.kappa == min(p.kappa for p in meeting)
    impossible = choose_operating_point(curve, 1.0, max_accuracy_drop=0.0)
    assert not impossible.meets_target and impossible.kappa == curve[
        int(np.argmax(natural))].kappa
    with pytest.raises(ValueError, match="max_accuracy_drop"):
        choose_operating_point(curve, core_accuracy, -0.1)


def test_a_drop_of_exactly_the_allowed_points_meets_the_target():
    # 9,902 against 9,932 of 10,000 right: 0.3 points, though 0.9932 - 0.9902 > 0.003 in floats
    assert 0.9932 - 0.9902 > 0.003
    assert within_accuracy_drop(0.9902, 0.9932, 0.003)
    assert not within_accuracy_drop(0.9901, 0.9932, 0.003)
    assert within_accuracy_drop(0.5, 0.9932, None)
    point = choose_operating_point([CurvePoint(1.0, 0.9902, 0.85, 1.0, 0, 0, 10_000)], 0.9932,
                                   0.003)
    assert point.meets_target


def test_the_bound_selectors_curve_counts_certified_selections_at_every_kappa():
    eps, kappas = 0.1, [1, 1.5, 2]
    bounds = SELECTOR_KINDS["bounds"]
    radii = sorted({r for kappa in kappas for r in bounds.selection_radii(eps, kappa)})
    # a core without a certificate: robust nowhere
    certified_radius, branch_right, core_right, branch, core = branch_and_core(
        3, 1000, radii, 0.2, 0.99, 0.8, 0.0)

    def bound_selection(deployed, eps, kappa, with_interval_bounds=True):
        return Selection.bounds(deployed, branch, eps, kappa, with_interval_bounds)

    for with_interval_bounds in (True, False):
        curve = operating_curve(branch, core, eps, kappas, functools.partial(
            bound_selection, with_interval_bounds=with_interval_bounds))
        for point, kappa in zip(curve, kappas, strict=True):
            selected = certified_radius > kappa * eps
            stable = certified_radius > (kappa + 1) * eps
            natural = np.where(selected, branch_right, core_right)
            certified = selected & branch_right & (stable if with_interval_bounds else False)
            assert point.natural_accuracy == pytest.approx(natural.mean())
            assert point.robust_accuracy == pytest.approx(certified.mean())
            assert point.selection_rate == pytest.approx(selected.mean())
    # with interval bounds, a larger κ trades certificates for natural accuracy
    curve = operating_curve(branch, core, eps, kappas, bound_selection)
    assert [p.robust_accuracy for p in curve] == sorted(
        (p.robust_accuracy for p in curve), reverse=True)
    assert curve[-1].natural_accuracy > curve[0].natural_accuracy


def test_clopper_pearson_intervals():
    low, high = clopper_pearson(0, 10)
    assert low == 0 and high == pytest.approx(1 - 0.025 ** 0.1)
    low, high = clopper_pearson(950, 1000)
    assert low < 0.95 < high and high - low < 0.03
    # paired: 12 inputs lost only by the first, none only by the second, is beyond chance
    assert paired_lower(12, 0) and not paired_lower(3, 2) and not paired_lower(0, 0)
    with pytest.raises(ValueError, match="trials"):
        clopper_pearson(3, 2)


def test_records_at_several_radii_by_bisection_equal_one_check_per_radius(monkeypatch):
    model = random_linear(3, dim=4, seed=7)
    x = 0.3 + 0.4 * torch.rand(300, 4, generator=torch.Generator().manual_seed(7))
    y = model(x).argmax(1)
    radii = [0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.14]
    attack = make_attack("pgd", steps=30, target_classes=2)
    calls = []

    def counting_check(*arguments, **options):
        calls.append(len(arguments[1]))
        return check_robustness(*arguments, **options)

    monkeypatch.setattr(records_module, "check_robustness", counting_check)
    records = evaluate_model(model, x, y, ThreatModel("linf", 0.1), radii, attack,
                             progress=False)
    monkeypatch.undo()
    radius = exact_radius(model, x, "linf").numpy()
    for eps in radii:
        _, one = check_robustness(model, x, ThreatModel("linf", eps), attack)
        assert np.array_equal(records.robust_at(eps), one.numpy())
        assert np.array_equal(records.robust_at(eps), radius > eps)
    assert sum(calls) == 3 * len(x)  # log2(7 + 1) checks per input instead of 7


def test_an_operating_point_that_gives_the_robustness_up_is_flagged():
    curve = [CurvePoint(kappa, 0.99, robust, 0.5, 0, 0, 1000)
             for kappa, robust in ((1.0, 0.9), (2.0, 0.45), (3.0, 0.002))]
    assert robustness_given_up(curve, curve[0]) is None
    assert robustness_given_up(curve, curve[1]) is None  # half kept: not flagged
    flagged = robustness_given_up(curve, curve[2])
    assert flagged.kappa == 1.0 and flagged.share_kept == pytest.approx(0.002 / 0.9)
    nothing = CurvePoint(1.0, 0.99, 0.0, 0.5, 0, 0, 1000)
    assert robustness_given_up([nothing], nothing) is None


def test_compose_command_chooses_kappa_on_validation_records(tmp_path, capsys):
    rng = np.random.default_rng(1)
    files = {}
    for split in ("validation", "test"):
        n = 500
        labels = rng.integers(0, 2, n)
        branch_radius = rng.exponential(0.2, n)
        right = rng.random(n) < np.where(branch_radius > 0.3, 0.999, 0.9)
        branch = records_from_radius(labels, np.where(right, labels, 1 - labels),
                                     branch_radius, sweep_radii(0.1, [1, 2, 3]))
        core = Records(labels, np.where(rng.random(n) < 0.98, labels, 1 - labels),
                       {0.1: rng.random(n) < 0.3})
        for name, part in (("branch", branch), ("core", core)):
            files[split, name] = tmp_path / f"{split}-{name}.csv"
            part.to_csv(files[split, name])
    arguments = ["compose", "--branch", str(files["test", "branch"]), "--core",
                 str(files["test", "core"]), "--eps", "0.1"]
    assert main([*arguments, "--max-accuracy-drop", "0", "--validation-branch",
                 str(files["validation", "branch"]), "--validation-core",
                 str(files["validation", "core"]), "--kappas", "1", "2", "3", "--out",
                 str(tmp_path / "chosen")]) == 0
    summary = json.loads((tmp_path / "chosen" / "summary.json").read_text())
    point = OperatingPoint.from_json(summary["operating_point"])
    chosen = point.chosen
    given_up = robustness_given_up(point.validation_curve, chosen)
    assert ("warning: kappa" in capsys.readouterr().out) == (given_up is not None)
    assert summary["kappa"] == chosen.kappa and chosen.kappa > 1
    assert chosen.natural_accuracy >= chosen.core_accuracy or not chosen.meets_target
    # the count at the chosen kappa is the one --kappa gives
    assert main([*arguments, "--kappa", str(chosen.kappa), "--out",
                 str(tmp_path / "fixed")]) == 0
    fixed = json.loads((tmp_path / "fixed" / "summary.json").read_text())
    assert fixed["metrics"] == summary["metrics"]
    assert fixed["metrics"]["robust_accuracy"] <= fixed["metrics"]["unattacked_robust_accuracy"]
    # a target without validation records is a clear error
    assert main([*arguments, "--max-accuracy-drop", "0", "--out", str(tmp_path / "bad")]) == 2


def test_compose_warns_where_the_target_is_met_only_by_giving_the_robustness_up(tmp_path,
                                                                                capsys):
    """κ = 1 selects 80 inputs, 10 of them wrongly (below the core's accuracy); κ = 3 selects
    none (the branch is robust at no radius above 0.2): the composition is the core, accurate and
    almost never robust."""
    labels = np.zeros(100, dtype=np.int64)
    predictions = np.where(np.arange(100) < 10, 1, 0)
    held = np.arange(100) < 80
    branch = Records(labels, predictions, {0.1: held, 0.2: held, 0.3: ~held & False,
                                           0.4: ~held & False})
    core = Records(labels, labels, {0.1: np.arange(100) == 50})
    for name, part in (("branch", branch), ("core", core)):
        part.to_csv(tmp_path / f"{name}.csv")
    files = [str(tmp_path / "branch.csv"), str(tmp_path / "core.csv")]
    assert main(["compose", "--branch", files[0], "--core", files[1], "--eps", "0.1",
                 "--max-accuracy-drop", "0", "--validation-branch", files[0],
                 "--validation-core", files[1], "--kappas", "1", "3", "--out",
                 str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "warning: kappa 3 keeps the accuracy target only by giving up most of the " \
           "robustness: 1.0% sound robust accuracy on the validation records, against 70.0% " \
           "at kappa 1" in printed
