"""The adaptive attack on a composition, and the count held against it, on hand-made linear
models whose regions are known.

Two classes over [0, 1]²; each model predicts class 1 where the second feature exceeds its own
boundary. eps = 0.1 (linf); the robustness selector checks robustness at κ·0.1 around the input
it sees, and its decision is stable where the branch is robust at (κ+1)·0.1."""

import numpy as np
import pytest
import torch
from conftest import Linear

from robustgate import ComposedClassifier, ThreatModel
from robustgate.attacks import PGD, check_robustness
from robustgate.evaluate import (
    AdaptiveAttack,
    Records,
    Selection,
    compose_records,
    evaluate_model,
)
from robustgate.evaluate.sanity import sanity_checks
from robustgate.select import ConfidenceSelector, RobustnessSelector

THREAT = ThreatModel("linf", 0.1)


def boundary_model(boundary: float, steepness: float = 20.0) -> Linear:
    """Class 1 where ``x[1] > boundary``."""
    return Linear(torch.tensor([[0.0, 0.0], [0.0, steepness]]),
                  torch.tensor([0.0, -steepness * boundary]))


def robustness_composition(branch_boundary: float, core_boundary: float, kappa: float = 1.0
                           ) -> ComposedClassifier:
    branch = boundary_model(branch_boundary)
    check = PGD(steps=20, relative_step=0.1, early_exit=True, seed=0)
    return ComposedClassifier(branch, RobustnessSelector(branch, THREAT, check, kappa),
                              boundary_model(core_boundary))


def robust_accuracy(composed, x, y, attack):
    predicted, robust = check_robustness(composed, x, THREAT, attack)
    return ((predicted == y) & robust).tolist()


def counted(composed, x, y, kappa=1.0):
    """Robust accuracy counted in the sound form from the parts' records (robustness selector
    at ``kappa``, or the composition's score selector)."""
    check = PGD(steps=20, relative_step=0.1, early_exit=True, seed=0)
    (branch, selector), core = composed.stages[0], composed.core
    radii = [0.1, kappa * 0.1, (kappa + 1) * 0.1] + ([(kappa - 1) * 0.1] if kappa > 1 else [])
    branch_records = evaluate_model(branch, x, y, THREAT, radii, check, progress=False)
    core_records = evaluate_model(core, x, y, THREAT, [0.1], check, progress=False)
    if isinstance(selector, RobustnessSelector):
        selection = Selection.robustness(branch_records, 0.1, kappa)
    else:
        selection = Selection.scores(branch_records, selector.select(x).numpy(), 0.1)
    sound = compose_records(branch_records, core_records, selection)
    return (sound.accurate & sound.robust_at(0.1)).tolist()


def test_steers_an_abstained_input_into_a_robust_and_wrong_branch_region():
    # At x = (0.5, 0.5), label 0: the branch says 1 but is not robust at 0.1 (its boundary 0.45
    # is 0.05 away), so the core answers 0, robustly (its boundary is at 0.9); at (0.5, 0.6) the
    # branch is robust and wrong. The count does not hold the input: the branch is wrong on it.
    composed = robustness_composition(0.45, 0.9)
    x, y = torch.tensor([[0.5, 0.5]]), torch.tensor([0])
    assert composed.predict(x)[1].tolist() == [composed.core_route]
    assert counted(composed, x, y) == [False]
    assert robust_accuracy(composed, x, y, AdaptiveAttack(steers=[0.0], target_classes=0)) == [
        False]
    assert robust_accuracy(composed, x, y, AdaptiveAttack()) == [False]


def test_moves_a_selected_input_to_where_the_selector_abstains_and_the_core_is_wrong():
    # At x2 = 0.57, label 1, the branch is robust at 0.1 and right, but not at 0.2; at x2 = 0.5
    # it is not robust at 0.1, so the core answers, and the core says 0 below 0.9. The sound
    # indicator form does not count the input (the core disagrees with the branch).
    composed = robustness_composition(0.45, 0.9)
    x, y = torch.tensor([[0.5, 0.57]]), torch.tensor([1])
    assert composed.predict(x) == (torch.tensor([1]), torch.tensor([0]))
    assert counted(composed, x, y) == [False]
    assert robust_accuracy(composed, x, y, AdaptiveAttack()) == [False]


def test_cannot_break_what_is_robust_by_construction():
    # Branch robust on B(x, 0.2) and right: every reachable x' is selected and answered 1.
    composed = robustness_composition(0.45, 0.9)
    x, y = torch.tensor([[0.5, 0.66], [0.2, 0.8]]), torch.tensor([1, 1])
    assert counted(composed, x, y) == [True, True]
    assert robust_accuracy(composed, x, y, AdaptiveAttack()) == [True, True]


def test_confidence_raising_breaks_a_confidence_selector():
    # The branch is unsure at x2 = 0.5 (boundary 0.45), so the core answers 0, robustly; within
    # eps the branch becomes confident in class 1 and is selected.
    branch = boundary_model(0.45)
    selector = ConfidenceSelector(branch, threshold=-0.05)
    composed = ComposedClassifier(branch, selector, boundary_model(0.9))
    x, y = torch.tensor([[0.5, 0.5]]), torch.tensor([0])
    assert composed.predict(x)[1].tolist() == [1]
    attack = AdaptiveAttack()
    assert robust_accuracy(composed, x, y, attack) == [False]
    assert sum(attack.candidate_counts.values()) == 1
    assert counted(composed, x, y) == [False]


POINTS = torch.rand(60, 2, generator=torch.Generator().manual_seed(1))
LABELS = (POINTS[:, 1] > 0.5).long()


@pytest.mark.parametrize("kappa", [1.0, 2.0])
def test_the_count_is_at_or_below_the_attacked_figure_per_input(kappa):
    # the κ = 2 selector that the old count over-counted, and the paper's κ = 1, on one grid of
    # inputs: every input the count holds, the adaptive attack cannot break
    composed = robustness_composition(0.45, 0.6, kappa)
    held = robust_accuracy(composed, POINTS, LABELS, AdaptiveAttack(steps=30))
    count = counted(composed, POINTS, LABELS, kappa)
    assert all(h for h, c in zip(held, count, strict=True) if c)
    assert sum(count) > 0


def test_a_score_selectors_count_is_at_or_below_its_attacked_figure():
    branch = boundary_model(0.45)
    composed = ComposedClassifier(branch, ConfidenceSelector(branch, threshold=-0.05),
                                  boundary_model(0.6))
    held = robust_accuracy(composed, POINTS, LABELS, AdaptiveAttack(steps=30))
    count = counted(composed, POINTS, LABELS)
    assert all(h for h, c in zip(held, count, strict=True) if c)
    assert sum(count) > 0


def test_adaptive_records_resume_and_stay_in_the_ball(tmp_path):
    composed = robustness_composition(0.45, 0.9)
    x = torch.rand(40, 2, generator=torch.Generator().manual_seed(0))
    y = (x[:, 1] > 0.5).long()
    attack = AdaptiveAttack(steps=20)
    records = evaluate_model(composed, x, y, THREAT, [0.1], attack, batch_size=10,
                             progress=False)
    assert records.predictions.tolist() == composed.predict(x)[0].tolist()
    assert 0 < records.robust_at(0.1).sum() < len(x)
    # interrupted after two batches: those are read back (the first marked, to tell), the rest
    # attacked as in the uninterrupted run
    partial = tmp_path / "adaptive.partial.csv"
    done = records.robust_at(0.1)[:20].copy()
    done[0] = not done[0]
    Records(records.labels[:20], records.predictions[:20], {0.1: done}).to_csv(partial)
    resumed = evaluate_model(composed, x, y, THREAT, [0.1], attack, batch_size=10,
                             progress=False, path=tmp_path / "adaptive.csv")
    assert resumed.robust_at(0.1)[0] == done[0]
    assert np.array_equal(resumed.robust_at(0.1)[1:], records.robust_at(0.1)[1:])
    with pytest.raises(ValueError, match="target_classes"):
        AdaptiveAttack(target_classes=-1)
    with pytest.raises(ValueError, match="steer"):
        AdaptiveAttack(steers=[])


def test_an_input_s_adaptive_attack_does_not_depend_on_its_batch():
    """Random starts drawn per input (its index): the same adversarial point for an input
    attacked alone, in a batch, or in another batch order; other seeds, other points."""
    composed = robustness_composition(0.45, 0.9)
    x = torch.rand(24, 2, generator=torch.Generator().manual_seed(1))
    target = composed.predict(x)[0]
    attack = AdaptiveAttack(steps=5, restarts=1)
    whole = attack(composed, x, target, THREAT)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(2))
    shuffled = attack(composed, x[order], target[order], THREAT, indices=order)
    assert torch.equal(shuffled, whole[order])
    one = attack(composed, x[7:8], target[7:8], THREAT, indices=torch.tensor([7]))
    assert torch.equal(one, whole[7:8])
    other = AdaptiveAttack(steps=5, restarts=1, seed=1)(composed, x, target, THREAT)
    assert not torch.equal(other, whole)


def test_sanity_checks_on_a_composition():
    composed = robustness_composition(0.45, 0.6)
    x = torch.rand(60, 2, generator=torch.Generator().manual_seed(3))
    y = (x[:, 1] > 0.5).long()
    checks = sanity_checks(composed, x, y, THREAT, AdaptiveAttack(steps=20), square_queries=200)
    assert not checks["gradient_attack_masked"]
    low, _ = checks["gradient"]["interval"]
    assert checks["square"]["robust_accuracy"] >= low
    assert checks["falls_as_eps_grows"] and checks["largest_eps_robust_accuracy"] == 0
    assert set(checks["robust_accuracy_by_eps"]) == {"0.2", "0.4", "0.8"}


def test_sanity_checks_flag_a_gradient_attack_that_finds_nothing():
    # an attack whose gradients are masked entirely: it never moves; Square finds the flips
    composed = robustness_composition(0.45, 0.6)
    x = torch.rand(80, 2, generator=torch.Generator().manual_seed(4))
    y = (x[:, 1] > 0.5).long()

    def blind(composed, x, target, threat):
        return x.clone()

    checks = sanity_checks(composed, x, y, ThreatModel("linf", 0.2), blind, square_queries=200,
                           eps_factors=())
    assert checks["gradient_attack_masked"]
