import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from robustgate.threat import ThreatModel

TOLERANCE = 1e-5


def batches(dim: int = 4):
    inside = arrays("float32", (3, dim), elements=st.floats(0, 1, width=32))
    anywhere = arrays("float32", (3, dim), elements=st.floats(-3, 3, width=32))
    return st.tuples(inside, anywhere)


@settings(max_examples=200, deadline=None)
@given(batches(), st.sampled_from(["linf", "l2"]), st.floats(0.0, 1.0))
def test_projection_stays_in_ball_and_domain(pair, norm, eps):
    x, x_adv = (torch.from_numpy(a) for a in pair)
    threat = ThreatModel(norm, eps)
    projected = threat.project(x_adv, x)
    assert bool((threat.norm_of(projected - x) <= eps + TOLERANCE).all())
    assert float(projected.min()) >= 0.0 and float(projected.max()) <= 1.0


@settings(max_examples=100, deadline=None)
@given(batches(), st.sampled_from(["linf", "l2"]), st.floats(0.01, 1.0))
def test_projection_keeps_points_already_inside(pair, norm, eps):
    x = torch.from_numpy(pair[0])
    threat = ThreatModel(norm, eps)
    inside = threat.project(threat.random_start(x), x)
    assert torch.allclose(threat.project(inside, x), inside, atol=1e-6)


@settings(max_examples=100, deadline=None)
@given(batches(), st.sampled_from(["linf", "l2"]), st.floats(0.0, 1.0), st.integers(0, 2**31))
def test_random_start_in_ball_and_domain(pair, norm, eps, seed):
    x = torch.from_numpy(pair[0])
    threat = ThreatModel(norm, eps)
    start = threat.random_start(x, torch.Generator().manual_seed(seed))
    assert bool((threat.norm_of(start - x) <= eps + TOLERANCE).all())
    assert float(start.min()) >= 0.0 and float(start.max()) <= 1.0


def test_linf_projection_is_the_closest_point():
    x = torch.tensor([[0.5, 0.05]])
    threat = ThreatModel("linf", 0.1)
    projected = threat.project(torch.tensor([[0.9, -0.5]]), x)
    assert torch.allclose(projected, torch.tensor([[0.6, 0.0]]))


def test_ascent_step_has_the_step_size_in_the_threat_norm():
    gradient = torch.tensor([[3.0, -4.0], [0.0, 2.0]])
    assert torch.allclose(ThreatModel("linf", 0.1).ascent_step(gradient, 0.02).abs().amax(1),
                          torch.tensor([0.02, 0.02]))
    assert torch.allclose(ThreatModel("l2", 0.1).ascent_step(gradient, 0.02).norm(dim=1),
                          torch.tensor([0.02, 0.02]))


@pytest.mark.parametrize("eps", [-0.1, math.nan, math.inf, 1.5])
def test_invalid_eps_is_a_clear_error(eps):
    with pytest.raises(ValueError, match="eps"):
        ThreatModel("linf", eps)


def test_l2_eps_beyond_the_domain_diameter_is_an_error():
    threat = ThreatModel("l2", 2.0)
    threat.check_dimension(torch.zeros(1, 9))  # diameter 3
    with pytest.raises(ValueError, match="diameter"):
        threat.check_dimension(torch.zeros(1, 2))


def test_unknown_norm_is_an_error():
    with pytest.raises(ValueError, match="norm"):
        ThreatModel("l1", 0.1)


def test_scaled_doubles_the_radius_and_validates():
    assert ThreatModel("linf", 0.1).scaled(2).eps == pytest.approx(0.2)
    with pytest.raises(ValueError, match="eps"):
        ThreatModel("linf", 0.6).scaled(2)
