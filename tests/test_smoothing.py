"""Randomized smoothing against known answers: a linear binary classifier is its own smoothed
classifier, and its true L2 radius is the distance to its hyperplane."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binom, binomtest, norm

from robustgate.certify import (
    ABSTAIN,
    Smooth,
    clopper_pearson_lower,
    covering_l2_radius,
    max_certifiable_radius,
    stable_radius,
    vote_radius,
)
from robustgate.config import SmoothingSettings
from robustgate.threat import ThreatModel
from tests.conftest import Linear

SIGMA = 0.1


def hyperplane() -> Linear:
    """Class 0 where ``x_0 > 0.5``: the L2 distance to the boundary is ``|x_0 − 0.5|``."""
    return Linear(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), torch.tensor([-0.5, 0.5]))


def at_distance(distances: list[float] | torch.Tensor) -> torch.Tensor:
    distances = torch.as_tensor(distances, dtype=torch.float32)
    return torch.stack([0.5 + distances, torch.full_like(distances, 0.3)], dim=1)


def test_certified_radius_comes_within_ten_percent_of_the_distance_to_the_hyperplane():
    distances = SIGMA * torch.tensor([0.25, 0.5, 1.0, 2.0, 3.0, 3.5])
    smooth = Smooth(hyperplane(), 2, SIGMA, batch_size=50_000)
    predictions, radii, p_lower = smooth.certify(at_distance(distances), 100, 100_000, 0.001)
    assert (predictions == 0).all()
    assert (radii <= distances.double()).all()
    assert (radii >= 0.9 * distances.double()).all(), (radii / distances).tolist()
    assert torch.allclose(radii, SIGMA * torch.from_numpy(norm.ppf(p_lower.numpy())))


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_radii_above_the_truth_occur_at_rate_alpha(alpha):
    """Over 3000 independent certifications the radius exceeds the truth at a rate consistent
    with ``alpha`` (Clopper–Pearson is conservative, so at most alpha); the same check rejects a
    certificate that slips to level ``2·alpha``."""
    distance, trials = 0.5 * SIGMA, 3000
    smooth = Smooth(hyperplane(), 2, SIGMA, batch_size=100_000)
    x = at_distance([distance] * trials)

    def rate_not_above(level: float) -> bool:
        _, radii, _ = smooth.certify(x, 10, 400, level, seed=int(level * 100))
        above = int((radii > distance).sum())
        assert above > 0  # the check is not vacuous
        return binomtest(above, trials, alpha, alternative="greater").pvalue > 0.001

    assert rate_not_above(alpha)
    assert not rate_not_above(2 * alpha)


def test_clopper_pearson_lower_bound_is_the_exact_one_sided_bound():
    for successes, trials, alpha in [(0, 50, 0.05), (1, 10, 0.001), (77, 100, 0.01),
                                     (1000, 1000, 0.001), (4321, 10_000, 0.2)]:
        two_sided = binomtest(successes, trials).proportion_ci(1 - 2 * alpha, method="exact")
        assert float(clopper_pearson_lower(successes, trials, alpha)) == pytest.approx(
            two_sided.low, abs=1e-12)


def test_the_largest_certifiable_radius_is_reached_when_every_draw_agrees():
    n, alpha = 1000, 0.001
    assert max_certifiable_radius(SIGMA, n, alpha) == pytest.approx(
        SIGMA * norm.ppf(alpha ** (1 / n)))
    far = Smooth(hyperplane(), 2, SIGMA).certify(at_distance([0.45]), 10, n, alpha)[1]
    assert float(far[0]) == pytest.approx(max_certifiable_radius(SIGMA, n, alpha))


def test_predict_abstains_on_the_boundary_and_answers_far_from_it():
    smooth = Smooth(hyperplane(), 2, SIGMA, batch_size=100_000)
    on_boundary = smooth.predict(at_distance([0.0] * 400), 1000, 0.05)
    answered = int((on_boundary != ABSTAIN).sum())
    assert binomtest(answered, 400, 0.05, alternative="greater").pvalue > 0.001
    assert answered < 400 * 0.2
    far = smooth.predict(at_distance([0.3, -0.3]), 1000, 0.05)
    assert far.tolist() == [0, 1]


def test_same_seed_same_certificates_and_many_inputs_per_pass():
    smooth = Smooth(hyperplane(), 2, SIGMA, batch_size=300)
    x = at_distance(torch.linspace(-0.2, 0.2, 7))
    first = smooth.certify(x, 10, 200, 0.01, seed=3)
    again = smooth.certify(x, 10, 200, 0.01, seed=3)
    other = smooth.certify(x, 10, 200, 0.01, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[2], other[2])
    assert (smooth.counts(x, 200).sum(dim=1) == 200).all()


def test_smoothed_module_votes_for_the_smoothed_class():
    smooth = Smooth(hyperplane(), 2, SIGMA, votes=500)
    x = at_distance([-0.2, 0.2])
    assert smooth(x).argmax(dim=1).tolist() == [1, 0]
    assert smooth(x).sum(dim=1).tolist() == [500, 500]


def test_bad_settings_and_inputs_raise_clear_errors():
    model = hyperplane()
    with pytest.raises(ValueError, match="sigma"):
        Smooth(model, 2, 0.0)
    smooth = Smooth(model, 2, SIGMA)
    x = at_distance([0.1])
    with pytest.raises(ValueError, match="n0=200 selection draws exceed"):
        smooth.certify(x, 200, 100, 0.01)
    for alpha in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="alpha"):
            smooth.certify(x, 10, 100, alpha)
    with pytest.raises(ValueError, match="outside the domain"):
        smooth.certify(x + 2, 10, 100, 0.01)


def test_linf_threats_are_certified_through_the_covering_l2_radius():
    assert covering_l2_radius(ThreatModel("linf", 0.1), 784) == pytest.approx(2.8)
    assert covering_l2_radius(ThreatModel("l2", 0.5), 784) == 0.5


@settings(max_examples=25, deadline=None)
@given(st.floats(0.05, 1.0), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_stable_radius_covers_the_deployed_radius_plus_the_distance(sigma, radius, distance):
    stable = stable_radius(sigma, radius * sigma, distance * sigma, 100, 10_000, 0.001)
    assert stable > radius * sigma + distance * sigma


def test_a_selector_deployed_at_a_reachable_input_selects_with_the_promised_probability():
    """At true radius ``stable_radius`` the deployed selector at the worst reachable input
    selects at least ``1 − failure`` of the time; a quarter sigma closer it selects less often."""
    n0, n, alpha, failure = 10, 400, 0.05, 0.2
    deployed, distance, trials = 0.5 * SIGMA, 0.5 * SIGMA, 2000
    stable = stable_radius(SIGMA, deployed, distance, n0, n, alpha, failure)
    smooth = Smooth(hyperplane(), 2, SIGMA, batch_size=100_000)

    def selection_rate(radius_at_x: float) -> float:
        predictions, radii, _ = smooth.certify(at_distance([radius_at_x - distance] * trials),
                                               n0, n, alpha, seed=7)
        return float(((predictions == 0) & (radii >= deployed)).float().mean())

    assert selection_rate(stable) >= 1 - failure - 3 * math.sqrt(failure * (1 - failure) / trials)
    assert selection_rate(stable - 0.25 * SIGMA) < 1 - failure
    assert np.isinf(stable_radius(SIGMA, 5 * SIGMA, 0.0, 10, 100, 0.001))


def test_an_inputs_noise_depends_on_its_index_not_on_the_inputs_beside_it():
    x = at_distance(torch.linspace(-0.05, 0.05, 9))
    whole = Smooth(hyperplane(), 2, SIGMA, batch_size=70).certify(x, 10, 300, 0.01, seed=5)
    pieces = [Smooth(hyperplane(), 2, SIGMA, batch_size=70).certify(
        x[start : start + 4], 10, 300, 0.01, seed=5, offset=start) for start in (0, 4, 8)]
    assert torch.equal(whole[2], torch.cat([piece[2] for piece in pieces]))


def test_the_certified_count_holds_for_the_deployed_composition():
    """A smoothed hyperplane branch (class 0 right of ``x_0 = 0.5``) composed with a core that
    always answers 1, at L2 eps = 0.05. Every input counted as certified keeps its right answer
    at its worst reachable input (moved eps towards the boundary), the deployed selector
    certifying afresh there; counting stability at (κ+1)·eps instead would over-count."""
    from robustgate.compose import ComposedClassifier
    from robustgate.evaluate import Certificates, Records, Selection, compose_records
    from robustgate.select import SmoothingSelector

    eps, n0, n, alpha = 0.05, 50, 1000, 0.01
    distances = torch.cat([torch.linspace(0.09, 0.13, 300), torch.linspace(0.13, 0.3, 100)])
    x, y = at_distance(distances), torch.zeros(400, dtype=torch.int64)
    smooth = Smooth(hyperplane(), 2, SIGMA, batch_size=50_000)
    predictions, radii, p_lower = smooth.certify(x, n0, n, alpha, seed=1)
    branch = Certificates(y.numpy(), predictions.numpy(), radii.numpy(), p_lower.numpy(),
                          np.zeros(400))
    core = Linear(torch.tensor([[0.0, 0.0], [0.0, 0.0]]), torch.tensor([0.0, 1.0]))
    core_records = Records(y.numpy(), np.ones(400, np.int64), {eps: np.zeros(400, bool)})
    threat = ThreatModel("l2", eps)
    smoothing = SmoothingSettings(sigma=SIGMA, n0=n0, n=n, alpha=alpha)
    selection = Selection.smoothing(branch, eps, eps, smoothing)
    counted = compose_records(branch.records(threat, [eps], 2), core_records,
                              selection).robust_at(eps)
    deployed = ComposedClassifier(smooth, SmoothingSelector(smooth, eps, smoothing, seed=2), core)
    worst = x - torch.tensor([eps, 0.0])
    right_at_worst = (deployed.predict(worst)[0] == 0).numpy()
    assert counted.sum() > 100
    assert right_at_worst[counted].mean() >= 1 - 2 * alpha
    naive = branch.certified_at(2 * eps)
    assert (naive & ~right_at_worst).sum() > 5  # 9 with these seeds


def test_the_composition_answers_with_the_class_the_smoothing_selector_certified():
    from robustgate.compose import ComposedClassifier
    from robustgate.select import SmoothingSelector

    smoothing = SmoothingSettings(sigma=SIGMA, n0=50, n=500, alpha=0.01)
    smooth = Smooth.from_settings(hyperplane(), smoothing)
    selector = SmoothingSelector(smooth, 0.05, smoothing)
    with pytest.raises(ValueError, match="smoothed at sigma 0.2; its settings say sigma 0.1"):
        SmoothingSelector(Smooth(hyperplane(), 2, 2 * SIGMA), 0.05, smoothing)

    class Wrong(torch.nn.Module):  # a branch whose own forward would answer otherwise
        input_shape, num_classes = (2,), 2

        def forward(self, x):
            return torch.stack([torch.zeros(len(x)), torch.ones(len(x))], dim=1)

    core = Linear(torch.zeros(2, 2), torch.tensor([0.0, 1.0]))
    x = at_distance([0.3, 0.01])
    labels, routes = ComposedClassifier(Wrong(), selector, core).predict(x)
    assert routes.tolist() == [0, 1] and labels.tolist() == [0, 1]
    with pytest.raises(ValueError, match="radius and distance"):
        stable_radius(SIGMA, -0.1, 0.0, 10, 100, 0.01)


def test_the_vote_radius_is_where_a_deployed_vote_keeps_its_class_with_the_promised_odds():
    """A smoothed core deployed as a vote of 101 draws: at the worst input within ``distance``
    of one whose exact radius is ``vote_radius``, the vote misses at most ``failure`` of the
    time; a little closer to the boundary it misses far more often."""
    votes, failure, distance = 101, 0.01, 0.05
    radius = vote_radius(SIGMA, distance, votes, failure)
    q = norm.cdf((radius - distance) / SIGMA)
    assert radius > distance and 0.5 < q < 1
    assert binom.cdf(votes // 2, votes, q) == pytest.approx(failure, rel=1e-3)
    assert vote_radius(SIGMA, distance, 11, failure) > radius  # fewer votes need more margin
    assert vote_radius(SIGMA, distance, 1, failure) == pytest.approx(  # one draw misses 1 − q
        SIGMA * norm.ppf(1 - failure) + distance)
    smooth = Smooth(hyperplane(), 2, SIGMA, batch_size=100_000, votes=votes)
    trials = 3000
    for worst, allowed in ((radius - distance, lambda rate: rate <= failure + 0.008),
                           (radius - distance - 0.6 * SIGMA, lambda rate: rate > 3 * failure)):
        x = at_distance([-worst] * trials)  # class 1 side: the vote should answer 1
        votes_for_one = smooth.counts(x, votes, seed=7)[:, 1]
        rate = float((votes_for_one <= votes // 2).float().mean())
        assert allowed(rate), (worst, rate)


def test_a_smoothed_core_counts_only_where_its_vote_holds(tmp_path):
    """The branch right but never stable: an input counts where the core is robust and right, its
    certified radius reaching the vote's margin, not merely the threat's radius."""
    from robustgate.config import ExperimentConfig, SmoothingSettings, parse_config
    from robustgate.evaluate import Certificates
    from robustgate.selector_kinds import SMOOTHING, CompositionRun

    n, eps = 8, 0.1
    threat = ThreatModel("l2", eps)
    settings = SmoothingSettings(sigma=SIGMA, n0=10, n=100, alpha=0.01, votes=101)
    voted = vote_radius(SIGMA, eps, 101, 0.01)
    labels = np.zeros(n, dtype=np.int64)
    core_radii = np.array([0.0, eps, (eps + voted) / 2, voted, voted + 0.1, 1.0, 1.0, 1.0])
    core_predictions = np.array([0, 0, 0, 0, 0, 0, 1, -1])
    branch = Certificates(labels, labels, np.zeros(n), np.full(n, 0.5), np.zeros(n))
    core = Certificates(labels, core_predictions, core_radii, np.full(n, 0.9), np.zeros(n))
    config = parse_config({
        "name": "vote", "data": {"name": "threegauss"},
        "models": {name: {"model": {"architecture": "MLP"}, "smoothing": settings.model_dump()}
                   for name in ("b", "c")},
        "evaluation": {"threat": {"norm": "l2", "eps": eps}},
        "compositions": [{"branch": "b", "core": "c", "selector": "smoothing"}]},
        ExperimentConfig)
    run = CompositionRun(config, tmp_path, {}, {}, (torch.zeros(n, 2), torch.zeros(n)), None,
                         threat, None, torch.device("cpu"), False,
                         certificates={"b": branch, "c": core})
    result = SMOOTHING.evaluate(run, config.compositions[0])
    assert result.extras["core_vote_l2_radius"] == voted > eps
    assert result.certified_accuracy == pytest.approx(3 / n)  # radii >= voted, right
    assert "deployed vote of 101" in result.extras["guarantee"]


def test_the_look_schedule_and_its_errors():
    from robustgate.certify import look_schedule

    assert look_schedule(100_000) == (100, 1_000, 10_000, 100_000)
    assert look_schedule(2_500, first=100, ratio=5) == (100, 500, 2_500)
    assert look_schedule(50) == (50,)
    with pytest.raises(ValueError, match="ratio"):
        look_schedule(1000, ratio=1)


def test_the_sequential_decision_stops_early_where_the_radius_is_clear_and_decides_rightly():
    """On the smoothed hyperplane (``p = Φ(d/σ)`` at distance ``d``): far beyond the selector's
    radius it selects at the first look, far below it abstains there, and near it draws on."""
    from robustgate.certify import look_schedule

    radius, looks = SIGMA, look_schedule(10_000)
    smooth = Smooth(hyperplane(), 2, SIGMA, batch_size=20_000)
    distances = SIGMA * torch.tensor([3.0, 2.0, 0.0, -0.2, 1.3])
    selected, classes, draws = smooth.decide(at_distance(distances), radius, 100, looks, 0.001)
    assert selected.tolist() == [True, True, False, False, True]
    assert classes[:2].tolist() == [0, 0] and (classes[2:4] == ABSTAIN).all()
    assert draws[:4].tolist() == [200, 200, 200, 200] and draws[4] > 200
    with pytest.raises(ValueError, match="looks"):
        smooth.decide(at_distance([0.1]), radius, 10, [100, 100], 0.01)


@pytest.mark.parametrize("alpha", [0.1, 0.2])
def test_a_sequential_selection_at_the_boundary_occurs_at_rate_at_most_alpha(alpha):
    """Where the exact radius is the selector's radius (``p = θ``), a selection is an error: over
    2000 decisions its rate is within sampling error of at most ``α``, the errors of the looks
    summed."""
    radius, trials = 0.5 * SIGMA, 2000
    smooth = Smooth(hyperplane(), 2, SIGMA, batch_size=100_000)
    selected, _, _ = smooth.decide(at_distance([radius] * trials), radius, 10, (30, 100, 300),
                                   alpha, seed=3)
    rate = float(selected.float().mean())
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / trials)


@settings(max_examples=20, deadline=None)
@given(st.floats(0.05, 1.0), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_the_sequential_stable_radius_covers_radius_and_distance_and_the_fixed_rules(sigma,
                                                                                   radius,
                                                                                   distance):
    from robustgate.certify import look_schedule, sequential_stable_radius

    looks = look_schedule(10_000)
    sequential = sequential_stable_radius(sigma, radius * sigma, distance * sigma, 100, looks,
                                          0.001)
    assert sequential > radius * sigma + distance * sigma
    # its last look alone is the fixed rule at a level split K ways, and more ways to miss
    fixed = stable_radius(sigma, radius * sigma, distance * sigma, 100, looks[-1],
                          0.001 / len(looks), failure=0.001)
    assert sequential >= fixed - 1e-9


def test_the_sequential_selector_at_a_reachable_input_selects_with_the_promised_probability():
    """The closed form of the smoothed hyperplane gives the exact radius at ``x``: at
    ``sequential_stable_radius`` the sequential decision at the worst reachable input (moved
    ``distance`` towards the boundary) selects at least ``1 − failure`` of the time, a quarter
    sigma closer less often."""
    from robustgate.certify import sequential_stable_radius

    n0, looks, alpha, failure = 10, (30, 100, 400), 0.05, 0.2
    deployed, distance, trials = 0.5 * SIGMA, 0.5 * SIGMA, 2000
    stable = sequential_stable_radius(SIGMA, deployed, distance, n0, looks, alpha, failure)
    smooth = Smooth(hyperplane(), 2, SIGMA, batch_size=100_000)

    def selection_rate(radius_at_x: float) -> float:
        selected, classes, _ = smooth.decide(at_distance([radius_at_x - distance] * trials),
                                             deployed, n0, looks, alpha, seed=7)
        return float((selected & (classes == 0)).float().mean())

    assert selection_rate(stable) >= 1 - failure - 3 * math.sqrt(failure * (1 - failure) / trials)
    assert selection_rate(stable - 0.25 * SIGMA) < 1 - failure
