import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from robustgate.evaluate import Records, compose_records, robustness_metrics, selection_metrics

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


def test_composition_arithmetic_on_hand_made_indicators():
    labels = [0, 1, 2, 0, 1, 2]
    # branch: accurate on 0,1,2,3; robust at eps on 0,1,2,4; at 2eps on 0,2
    branch = records(labels, [0, 1, 2, 0, 0, 0], [1, 1, 1, 0, 1, 0], [1, 0, 1, 0, 0, 0])
    # core: accurate everywhere; robust at eps on 0,3,4 only
    core = records(labels, labels, [1, 0, 0, 1, 1, 0], [0, 0, 0, 0, 0, 0])
    at_eps = compose_records(branch, core, branch.robust_at(0.1))
    # selected 0,1,2,4 -> branch answers (4 wrong, robust); 3,5 -> core (3 robust)
    assert at_eps.predictions.tolist() == [0, 1, 2, 0, 0, 2]
    assert robustness_metrics(at_eps.accurate, at_eps.robust_at(0.1)) == {
        "natural_accuracy": 5 / 6, "robust_accuracy": 4 / 6, "robust_inaccuracy": 1 / 6,
        "non_robust": 1 / 6,
    }
    sound = compose_records(branch, core, branch.robust_at(0.1), branch.robust_at(0.2))
    # the same answers; stable 0,2 -> branch robust; 1 (core not robust) and 4 (core robust
    # but disagrees with the branch) unstable -> not robust; 3,5 abstained -> core: 3 robust
    assert sound.predictions.tolist() == at_eps.predictions.tolist()
    assert sound.robust_at(0.1).tolist() == [True, False, True, True, False, False]
    metrics = robustness_metrics(sound.accurate, sound.robust_at(0.1))
    assert metrics["natural_accuracy"] == 5 / 6 and metrics["robust_accuracy"] == 3 / 6


def test_formula_form_equals_the_indicator_form():
    rng = np.random.default_rng(0)
    n = 200
    labels = rng.integers(0, 3, n)
    robust_at_eps = rng.random(n) < 0.8
    branch = records(labels, rng.integers(0, 3, n), robust_at_eps,
                     robust_at_eps & (rng.random(n) < 0.6))
    core = records(labels, rng.integers(0, 3, n), rng.random(n) < 0.3, rng.random(n) < 0.1)
    selected, stable = branch.robust_at(0.1), branch.robust_at(0.2)
    robacc_b = branch.accurate & branch.robust_at(0.1)
    robacc_c = core.accurate & core.robust_at(0.1)
    agree = branch.predictions == core.predictions
    natural = np.mean(selected * branch.accurate + (1 - selected) * core.accurate)
    unattacked = np.mean(selected * robacc_b + (1 - selected) * robacc_c)
    sound = np.mean(stable * robacc_b + (selected & ~stable) * (robacc_c & agree)
                    + (1 - selected) * robacc_c)
    for composed, robust in ((compose_records(branch, core, selected), unattacked),
                             (compose_records(branch, core, selected, stable), sound)):
        metrics = robustness_metrics(composed.accurate, composed.robust_at(0.1))
        assert metrics["natural_accuracy"] == pytest.approx(natural)
        assert metrics["robust_accuracy"] == pytest.approx(robust)
    assert sound < unattacked


def test_a_chain_is_a_composition_whose_core_is_a_composition():
    labels = [0, 0, 0]
    first = records(labels, [0, 1, 1], [1, 0, 0], [1, 0, 0])
    second = records(labels, [1, 0, 1], [0, 1, 0], [0, 1, 0])
    core = records(labels, [2, 2, 0], [0, 0, 1], [0, 0, 1])
    inner = compose_records(second, core, second.robust_at(0.2))
    chain = compose_records(first, inner, first.robust_at(0.2))
    assert chain.predictions.tolist() == [0, 0, 0]


def test_composition_rejects_mismatched_records():
    a = records([0, 1], [0, 1], [1, 1], [1, 1])
    with pytest.raises(ValueError, match="different numbers"):
        compose_records(a, records([0], [0], [1], [1]), np.array([1, 0], bool))
    with pytest.raises(ValueError, match="different labels"):
        compose_records(a, records([1, 1], [0, 1], [1, 1], [1, 1]), np.array([1, 0], bool))


def test_records_round_trip_through_csv(tmp_path):
    original = records([0, 1, 2], [0, 2, 2], [1, 0, 1], [0, 0, 1])
    original.to_csv(tmp_path / "r.csv")
    loaded = Records.read_csv(tmp_path / "r.csv")
    assert np.array_equal(loaded.predictions, original.predictions)
    assert np.array_equal(loaded.robust_at(0.2), original.robust_at(0.2))
    with pytest.raises(KeyError, match="0.3"):
        loaded.robust_at(0.3)
