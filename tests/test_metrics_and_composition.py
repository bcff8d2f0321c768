import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from robustgate.evaluate import (
    Records,
    Routes,
    Selection,
    compose_chain,
    compose_records,
    robustness_metrics,
    selection_metrics,
)
from robustgate.evaluate.sound_count import compare_with_attack

indicators = st.integers(1, 60).flatmap(
    lambda n: st.tuples(arrays(bool, n), arrays(bool, n))
)


@given(indicators)
def test_the_three_fractions_partition_the_data(pair):
    accurate, robust = pair
    metrics = robustness_metrics(accurate, robust)
    total = metrics["robust_accuracy"] + metrics["robust_inaccuracy"] + metrics["non_robust"]
    assert total == pytest.approx(1.0)
    assert metrics["natural_accuracy"] == pytest.approx(accurate.mean())
    assert all(0.0 <= value <= 1.0 for value in metrics.values())


def test_metrics_on_hand_made_indicators():
    accurate = np.array([1, 1, 0, 0, 1], bool)
    robust = np.array([1, 0, 1, 0, 1], bool)
    assert robustness_metrics(accurate, robust) == {
        "natural_accuracy": 0.6, "robust_accuracy": 0.4, "robust_inaccuracy": 0.2,
        "non_robust": 0.4,
    }
    assert selection_metrics(accurate, robust) == {
        "selection_rate": 0.6, "selected_accuracy": pytest.approx(2 / 3)}
    assert selection_metrics(accurate, np.zeros(5, bool))["selected_accuracy"] is None


def records(labels, predictions, robust_at_eps, robust_at_2eps):
    return Records(labels, predictions, {0.1: robust_at_eps, 0.2: robust_at_2eps})


def robustness(branch, kappa=1.0):
    return Selection.robustness(branch, 0.1, kappa)


def test_composition_arithmetic_on_hand_made_indicators():
    labels = [0, 1, 2, 0, 1, 2]
    # branch: accurate on 0,1,2,3; robust at eps on 0,1,2,4; at 2eps on 0,2
    branch = records(labels, [0, 1, 2, 0, 0, 0], [1, 1, 1, 0, 1, 0], [1, 0, 1, 0, 0, 0])
    # core: accurate everywhere; robust at eps on 0,3,4 only
    core = records(labels, labels, [1, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0])
    selected = branch.robust_at(0.1)
    at_eps = compose_records(branch, core, Selection.unattacked(branch, selected, 0.1))
    # selected 0,1,2,4 -> branch answers (4 wrong, robust); 3,5 -> core (3 robust)
    assert at_eps.predictions.tolist() == [0, 1, 2, 0, 0, 2]
    assert robustness_metrics(at_eps.accurate, at_eps.robust_at(0.1)) == {
        "natural_accuracy": 5 / 6, "robust_accuracy": 4 / 6, "robust_inaccuracy": 1 / 6,
        "non_robust": 1 / 6,
    }
    sound = compose_records(branch, core, robustness(branch))
    # the same answers; stable 0,2 -> robust; 1 (core not robust) and 4 (core robust but
    # disagrees with the branch) unstable -> not robust; abstained 3: the core is robust and
    # agrees with the branch -> robust; 5: the core is not robust
    assert sound.predictions.tolist() == at_eps.predictions.tolist()
    assert sound.robust_at(0.1).tolist() == [True, False, True, True, False, False]
    metrics = robustness_metrics(sound.accurate, sound.robust_at(0.1))
    assert metrics["natural_accuracy"] == 5 / 6 and metrics["robust_accuracy"] == 3 / 6


def test_an_abstained_input_counts_only_where_the_branch_agrees_with_a_robust_core():
    # abstained, core robust and right, branch wrong: an adversary may steer the input to where
    # the branch answers (the over-count of the old form)
    branch = records([0], [1], [0], [0])
    core = records([0], [0], [1], [1])
    sound = compose_records(branch, core, robustness(branch))
    assert sound.predictions.tolist() == [0] and sound.robust_at(0.1).tolist() == [False]


def classes(n, top=2):
    return arrays(np.int64, n, elements=st.integers(0, top))


monotone_parts = st.integers(1, 80).flatmap(lambda n: st.tuples(
    classes(n), classes(n), classes(n), classes(n, 4), arrays(bool, n)))


@given(monotone_parts)
def test_the_sound_form_is_the_design_formula_and_below_the_unattacked_form(parts):
    labels, branch_predictions, core_predictions, branch_radius, core_robust = parts
    # robustness records from a radius estimate (robust at 0.1·k for k < radius): monotone
    branch = Records(labels, branch_predictions,
                     {0.1 * k: branch_radius > k for k in (1, 2, 3)})
    core = Records(labels, core_predictions, {0.1: core_robust})
    acc_b, acc_c = branch.accurate, core.accurate
    robacc_b, robacc_c = acc_b & branch.robust_at(0.1), acc_c & core_robust
    for kappa in (1.0, 2.0):
        selection = robustness(branch, kappa)
        sound = compose_records(branch, core, selection)
        sound_robacc = sound.accurate & sound.robust_at(0.1)
        unattacked = compose_records(branch, core, Selection.unattacked(
            branch, selection.selected, 0.1))
        assert not (sound_robacc & ~(unattacked.accurate & unattacked.robust_at(0.1))).any()
        stable = selection.selected & branch.robust_at((kappa + 1) * 0.1)
        unreachable = ~branch.robust_at((kappa - 1) * 0.1) & ~selection.selected
        # DESIGN.md section 1: acc_B · (T ∨ robacc_C), and where no reachable input is selected
        # (κ > 1) the core alone
        expected = acc_b & (stable | robacc_c) | unreachable & robacc_c
        assert np.array_equal(sound_robacc, expected)
    scored = compose_records(branch, core, Selection.scores(branch, branch_radius > 2, 0.1))
    assert np.array_equal(scored.accurate & scored.robust_at(0.1), robacc_b & robacc_c)


def test_a_chain_is_a_composition_whose_core_is_a_composition():
    labels = [0, 0, 0]
    first = records(labels, [0, 1, 1], [1, 0, 0], [1, 0, 0])
    second = records(labels, [1, 0, 1], [0, 1, 0], [0, 1, 0])
    core = records(labels, [2, 2, 0], [0, 0, 1], [0, 0, 1])
    inner = compose_records(second, core, robustness(second))
    chain = compose_records(first, inner, robustness(first))
    assert chain.predictions.tolist() == [0, 0, 0]
    composed, routes = compose_chain([first, second], core, [robustness(first),
                                                             robustness(second)])
    assert np.array_equal(composed.robust_at(0.1), chain.robust_at(0.1))
    assert routes.tolist() == [0, 1, 2]


def test_composition_rejects_mismatched_records():
    a = records([0, 1], [0, 1], [1, 1], [1, 1])
    with pytest.raises(ValueError, match="different numbers"):
        compose_records(a, records([0], [0], [1], [1]), robustness(a))
    with pytest.raises(ValueError, match="different labels"):
        compose_records(a, records([1, 1], [0, 1], [1, 1], [1, 1]), robustness(a))
    with pytest.raises(ValueError, match="kappa"):
        robustness(a, 0.5)


def test_records_round_trip_through_csv(tmp_path):
    original = records([0, 1, 2], [0, 2, 2], [1, 0, 1], [0, 0, 1])
    original.to_csv(tmp_path / "r.csv")
    loaded = Records.read_csv(tmp_path / "r.csv")
    assert np.array_equal(loaded.predictions, original.predictions)
    assert np.array_equal(loaded.robust_at(0.2), original.robust_at(0.2))
    with pytest.raises(KeyError, match="0.3"):
        loaded.robust_at(0.3)


def test_routes_round_trip_with_and_without_scores(tmp_path):
    scored = Routes([0, 1, 1, 0], [0.25, -1.0, 3.5e-9, 0.1])
    scored.to_csv(tmp_path / "scored.csv")
    again = Routes.read_csv(tmp_path / "scored.csv")
    assert np.array_equal(again.routes, scored.routes)
    assert np.array_equal(again.scores, scored.scores)
    Routes([2, 0]).to_csv(tmp_path / "plain.csv")
    plain = Routes.read_csv(tmp_path / "plain.csv")
    assert plain.scores is None and plain.routes.tolist() == [2, 0]
    with pytest.raises(ValueError, match="3 scores for 2 routes"):
        Routes([0, 1], [0.1, 0.2, 0.3])


def test_the_attacked_composition_is_compared_input_by_input_with_its_count():
    labels = np.zeros(6, int)
    counted = Records(labels, [0, 0, 0, 1, 0, 0], {0.1: [1, 1, 0, 1, 1, 0]})
    attacked = Records(labels[:5], [0, 0, 0, 1, 0], {0.1: [1, 0, 1, 0, 1]})
    comparison = compare_with_attack(attacked, counted, 0.1)
    # counted robust and accurate: inputs 0, 1, 4 of the first five; attacked: 0, 2, 4
    assert comparison["samples"] == 5
    assert comparison["counted_robust_accuracy"] == pytest.approx(0.6)
    assert comparison["robust_accuracy"] == pytest.approx(0.6)
    assert comparison["difference_points"] == 0.0
    assert (comparison["counted_but_broken"], comparison["held_but_not_counted"]) == (1, 1)
    assert comparison["natural_agrees_with_count"]
    low, high = comparison["robust_accuracy_interval"]
    assert low < 0.6 < high
    alone = compare_with_attack(attacked, None, 0.1)
    assert alone["counted_robust_accuracy"] is None and alone["robust_accuracy"] == 0.6
    with pytest.raises(ValueError, match="not the first samples"):
        compare_with_attack(attacked, Records(np.ones(6, int), counted.predictions,
                                              counted.robust), 0.1)
