"""The per-operation rules of bound propagation: each backward rule is the transpose of its layer
(against autograd's vector-Jacobian product, an independent reference), and each interval rule
holds the layer's outputs on every point of the box."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from robustgate.certify.rules import ReLURule, rule_for
from robustgate.models.normalize import Normalize


def _batch_norm(features: int, two_d: bool) -> nn.Module:
    layer = (nn.BatchNorm2d if two_d else nn.BatchNorm1d)(features)
    with torch.no_grad():
        layer.running_mean.uniform_(-1, 1)
        layer.running_var.uniform_(0.5, 2)
        layer.weight.uniform_(-2, 2)
        layer.bias.uniform_(-1, 1)
    return layer.eval()


LAYERS = [
    (lambda: nn.Linear(6, 4), (6,)),
    (lambda: nn.Linear(6, 4, bias=False), (6,)),
    (lambda: nn.Conv2d(2, 3, 4, stride=2, padding=1), (2, 9, 9)),
    (lambda: nn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 8, 8)),
    (lambda: nn.Conv2d(2, 4, 3, stride=3, padding=2, dilation=2, groups=2), (2, 10, 11)),
    (lambda: nn.Conv2d(3, 2, 1, bias=False), (3, 5, 5)),
    (lambda: nn.AvgPool2d(2), (2, 7, 7)),
    (lambda: nn.AvgPool2d(3, stride=2, padding=1), (2, 8, 8)),
    (lambda: nn.AvgPool2d(2, divisor_override=3), (2, 6, 6)),
    (lambda: Normalize([0.1, 0.3], [0.5, 2.0]), (2, 4, 4)),
    (lambda: Normalize(0.2, 0.4), (5,)),
    (lambda: _batch_norm(3, True), (3, 4, 4)),
    (lambda: _batch_norm(5, False), (5,)),
    (lambda: nn.Flatten(), (2, 3, 3)),
]


@pytest.mark.parametrize(("make", "shape"), LAYERS)
def test_each_backward_rule_is_the_transpose_of_its_layer(make, shape):
    torch.manual_seed(0)
    layer = make()
    rule = rule_for(layer, torch.Size(shape))
    z = torch.randn(3, *shape, requires_grad=True)
    out = layer(z)
    coefficients = torch.randn(3, 5, *out.shape[1:])
    with torch.no_grad():
        transposed, constant = rule.backward(coefficients)
    assert transposed.shape == (3, 5, *shape) and constant.shape == (3, 5)
    for row in range(5):  # Λ·L(z) = (Λ·M)·z + Λ·L(0), M by autograd
        (expected,) = torch.autograd.grad(out, z, coefficients[:, row], retain_graph=True)
        assert torch.allclose(transposed[:, row], expected, atol=1e-5)
        value = (coefficients[:, row] * out).flatten(1).sum(1)
        through = (transposed[:, row] * z).flatten(1).sum(1) + constant[:, row]
        assert torch.allclose(value, through.detach(), atol=1e-4)


@pytest.mark.parametrize(("make", "shape"), [*LAYERS, (nn.ReLU, (4, 3)),
                                             (lambda: nn.MaxPool2d(2), (2, 6, 6))])
def test_each_interval_rule_holds_the_outputs_of_the_box(make, shape):
    torch.manual_seed(1)
    layer = make()
    rule = rule_for(layer, torch.Size(shape))
    centre, radius = torch.randn(4, *shape), torch.rand(4, *shape)
    with torch.no_grad():
        out_centre, out_radius = rule.interval(centre, radius)
        for _ in range(50):
            point = centre + radius * (2 * torch.rand_like(centre) - 1)
            out = layer(point)
            assert (out >= out_centre - out_radius - 1e-5).all()
            assert (out <= out_centre + out_radius + 1e-5).all()


def test_the_relu_backward_rule_is_a_lower_bound_with_exact_stable_units():
    torch.manual_seed(2)
    low = torch.tensor([[-2.0, -1.0, 0.5, -3.0]])
    high = torch.tensor([[1.0, 3.0, 2.0, -1.0]])
    coefficients = torch.randn(1, 6, 4)
    transposed, constant = ReLURule().backward(coefficients, low, high)
    for _ in range(200):
        z = low + (high - low) * torch.rand(1, 4)
        value = (coefficients * z.clamp(min=0).unsqueeze(1)).sum(2)
        assert (value >= (transposed * z.unsqueeze(1)).sum(2) + constant - 1e-5).all()
    assert torch.equal(transposed[..., 2], coefficients[..., 2])  # active: the identity
    assert (transposed[..., 3] == 0).all()  # inactive: zero


def test_crown_refuses_max_pooling_and_unsupported_average_pooling():
    with pytest.raises(ValueError, match="max pooling"):
        rule_for(nn.MaxPool2d(2), torch.Size((1, 4, 4))).backward(torch.zeros(1, 1, 1, 2, 2))
    with pytest.raises(ValueError, match="ceil_mode"):
        rule_for(nn.AvgPool2d(2, ceil_mode=True), torch.Size((1, 5, 5))).backward(
            torch.zeros(1, 1, 1, 3, 3))
