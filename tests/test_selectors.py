import numpy as np
import pytest
import torch
from conftest import Linear, random_linear
from hypothesis import given, settings
from hypothesis import strategies as st

from robustgate.config import MixingSettings
from robustgate.models import MLP, MixedClassifier, choose_mixing_weight, mix
from robustgate.select import (
    ConfidenceSelector,
    GateSelector,
    threshold_for_composed_accuracy,
    threshold_for_coverage,
    threshold_for_selective_accuracy,
)
from robustgate.train import TrainConfig, train_gate


def test_softmax_response_and_entropy_rank_confident_inputs_first():
    model = Linear(torch.tensor([[4.0, 0.0], [0.0, 0.0]]), torch.tensor([-2.0, 0.0]))
    x = torch.tensor([[0.5, 0.5], [0.9, 0.5], [0.1, 0.5]])  # margins 0, 1.6, -1.6
    for measure in ("softmax_response", "entropy"):
        scores = ConfidenceSelector(model, 0.0, measure).scores(x)
        assert scores[0] < scores[1] and scores[0] < scores[2]
        assert scores[1] == pytest.approx(float(scores[2]), rel=1e-6)
    response = ConfidenceSelector(model, 0.0).scores(x)
    assert response[0] == pytest.approx(np.log(0.5))
    assert ConfidenceSelector(model, float(np.log(0.6))).select(x).tolist() == [False, True, True]


def test_confidence_of_very_confident_inputs_stays_distinguishable():
    model = Linear(torch.tensor([[60.0], [0.0]]), torch.tensor([0.0, 0.0]))
    scores = ConfidenceSelector(model, 0.0).scores(torch.tensor([[0.5], [0.6]]))
    assert scores[0] < scores[1] < 0  # both softmax probabilities round to 1 in float32


def test_unknown_measure_and_bad_threshold_are_clear_errors():
    model = random_linear(3, 2, seed=0)
    with pytest.raises(ValueError, match="unknown confidence measure 'margin'"):
        ConfidenceSelector(model, 0.0, "margin")
    with pytest.raises(ValueError, match="threshold must be a number"):
        ConfidenceSelector(model, float("nan"))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), coverage=st.floats(0.01, 1.0), seed=st.integers(0, 10**6))
def test_threshold_for_coverage_selects_that_share(n, coverage, seed):
    scores = np.random.default_rng(seed).normal(size=n)
    threshold = threshold_for_coverage(scores, coverage)
    assert (scores >= threshold).sum() == int(np.ceil(coverage * n - 1e-9))


def test_calibrated_coverage_holds_on_new_data_within_sampling_error():
    rng = np.random.default_rng(0)
    validation, test = rng.normal(size=5000), rng.normal(size=20000)
    for coverage in (0.5, 0.9, 0.97):
        realized = (test >= threshold_for_coverage(validation, coverage)).mean()
        assert abs(realized - coverage) < 3 * np.sqrt(coverage * (1 - coverage) / 5000)


def test_ties_are_kept_together():
    scores = np.array([3.0, 2.0, 2.0, 2.0, 1.0])
    assert (scores >= threshold_for_coverage(scores, 0.4)).sum() == 4
    accurate = np.array([1, 1, 0, 1, 1], dtype=bool)
    assert threshold_for_selective_accuracy(scores, accurate, 0.8) == 1.0
    assert threshold_for_selective_accuracy(scores, accurate, 0.9) == 3.0


def test_selective_and_composed_accuracy_targets_on_hand_made_scores():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    branch = np.array([1, 1, 0, 1, 0], dtype=bool)
    core = np.array([1, 1, 1, 0, 1], dtype=bool)
    assert threshold_for_selective_accuracy(scores, branch, 1.0) == 0.8
    assert threshold_for_selective_accuracy(scores, branch, 0.75) == 0.6
    assert threshold_for_selective_accuracy(scores, np.zeros(5, bool), 0.5) > 0.9
    # composed accuracy keeping the top k: 4/5, 4/5, 4/5, 3/5, 4/5, 3/5 for k = 0 … 5
    assert threshold_for_composed_accuracy(scores, branch, core, 0.8) == 0.6
    assert threshold_for_composed_accuracy(scores, branch, core, 0.6) == 0.5
    assert threshold_for_composed_accuracy(scores, branch, core, 0.9) > 0.9
    with pytest.raises(ValueError, match="composed_accuracy must lie in"):
        threshold_for_composed_accuracy(scores, branch, core, 1.5)
    with pytest.raises(ValueError, match="differ in shape"):
        threshold_for_selective_accuracy(scores, branch[:3], 0.5)


def test_a_selector_calibrates_its_own_threshold_by_one_rule():
    model = random_linear(3, 2, seed=1)
    x = torch.rand(400, 2, generator=torch.Generator().manual_seed(1))
    selector = ConfidenceSelector(model, 0.0)
    info = selector.calibrate(x, coverage=0.75)
    assert selector.select(x).sum() == 300 and info["calibrated_for"] == {"coverage": 0.75}
    assert info["threshold"] == selector.threshold and info["calibration_samples"] == 400
    rng = np.random.default_rng(1)
    branch, core = rng.random(400) < 0.9, rng.random(400) < 0.95
    scores = selector.scores(x).numpy()
    selector.calibrate(x, branch, core, composed_accuracy=0.93)
    assert selector.threshold == threshold_for_composed_accuracy(scores, branch, core, 0.93)
    selector.calibrate(x, branch, selective_accuracy=0.92)
    assert selector.threshold == threshold_for_selective_accuracy(scores, branch, 0.92)
    with pytest.raises(ValueError, match="exactly one of"):
        selector.calibrate(x, branch, coverage=0.5, selective_accuracy=0.9)
    with pytest.raises(ValueError, match="core's"):
        selector.calibrate(x, branch, composed_accuracy=0.9)


def test_learned_gate_learns_where_the_branch_should_answer():
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(600, 2, generator=generator)
    target = (x[:, 0] > 0.5).numpy()
    gate = MLP(2, 2, hidden=(16,))
    selector = train_gate(gate, x, target, TrainConfig(epochs=30, batch_size=32, lr=0.1),
                          progress=False)
    held_out = torch.rand(400, 2, generator=generator)
    agreement = (selector.select(held_out) == (held_out[:, 0] > 0.5)).float().mean()
    assert agreement > 0.95
    with pytest.raises(ValueError, match="one class only"):
        train_gate(MLP(2, 2), x, np.ones(600, bool), TrainConfig(epochs=1), progress=False)
    with pytest.raises(ValueError, match="two-class"):
        GateSelector(MLP(2, 3))


def test_mixing_interpolates_between_the_two_models():
    standard, robust = random_linear(3, 2, seed=0), random_linear(3, 2, seed=1)
    x = torch.rand(50, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for weight, model in ((0.0, standard), (1.0, robust)):
            mixed = MixedClassifier(standard, robust, weight)(x)
            assert torch.allclose(mixed.exp(), torch.softmax(model(x), 1), atol=1e-6)
        nonlinear = MixedClassifier(standard, robust, 0.5, scale=2.0, power=2.0, shift=-0.5)(x)
        assert torch.allclose(nonlinear.exp().sum(1), torch.ones(50), atol=1e-5)
    with pytest.raises(ValueError, match="mixing weight"):
        MixedClassifier(standard, robust, 1.5)


def test_mixing_weight_is_the_largest_that_keeps_the_accuracy():
    labels = torch.tensor([0, 1, 2, 0])
    standard = torch.eye(3)[labels] * 5  # always right
    robust = torch.eye(3)[torch.tensor([0, 1, 2, 1])] * 5  # wrong on the last input
    weights = MixingSettings().weights
    assert weights[:2] == [0.0, 0.01] and weights[-1] == 1.0
    assert choose_mixing_weight(standard, robust, labels, 1.0, weights) == 0.5
    assert choose_mixing_weight(standard, robust, labels, 0.75, weights) == 1.0
    assert choose_mixing_weight(standard, robust, labels, 1.0, [0.0, 0.4, 0.6, 1.0]) == 0.4
    assert (mix(standard, robust, 0.5).argmax(1) == labels).all()


def test_risk_coverage_curve_and_aurc_on_hand_made_scores():
    from robustgate.evaluate.selective import area_under_risk_coverage, risk_coverage_curve

    accurate = np.array([1, 1, 0, 1], dtype=bool)
    coverage, risk = risk_coverage_curve(np.array([4.0, 3.0, 2.0, 1.0]), accurate)
    assert coverage.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert risk.tolist() == pytest.approx([0, 0, 1 / 3, 1 / 4])
    assert area_under_risk_coverage(np.array([1.0, 2.0, 3.0, 4.0]), accurate) == pytest.approx(
        (0 + 1 / 2 + 1 / 3 + 1 / 4) / 4)
    # a constant score (a selector without ranking): every coverage at the overall error rate
    assert risk_coverage_curve(np.zeros(4), accurate)[1] == pytest.approx([0.25] * 4)
    assert area_under_risk_coverage(np.arange(4.0), np.ones(4, bool)) == 0
