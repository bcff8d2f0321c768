"""Bound propagation over a traced forward: the same bounds as the layer walk on feed-forward
models, below the exact mixed-integer optimum on tiny residual networks, no certified input of a
residual network flipped by an attack, and operations without a rule refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import nn

from benchmarks.support import reference_bounds
from robustgate.attacks import make_attack
from robustgate.certify import (
    certify_bounds,
    crown_bounds,
    interval_bounds,
    margin_specification,
    preactivation_bounds,
    traced,
)
from robustgate.models import MLP, ResNet, SmallCNN, StridedCNN, WideResNet
from robustgate.models.normalize import Normalize
from robustgate.threat import ThreatModel
from tests.test_bounds import _pooled_network

FEED_FORWARD = [
    (lambda: MLP(4, 3, (8, 8)), (4,), 0.1, True),
    (lambda: MLP(6, 5, (16, 16, 16)), (6,), 0.05, True),
    (lambda: StridedCNN(channels=(4, 8), hidden=20, input_size=12), (1, 12, 12), 0.03, True),
    (lambda: SmallCNN(channels=(4, 8), hidden=20), (1, 28, 28), 0.01, False),
    (_pooled_network, (1, 12, 12), 0.03, True),
]


@pytest.mark.parametrize("network", range(len(FEED_FORWARD)))
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_traced_bounds_equal_the_layer_walks_on_feed_forward_models(network, norm):
    """In float64, to 1e-6: every method's margins, and IBP's and CROWN's bounds of the margin
    rows, against the walk over the layers in order (``reference_bounds``). (Against the layer
    walk this replaced, the float32 results were equal bit for bit.)"""
    make, shape, eps, crown = FEED_FORWARD[network]
    torch.manual_seed(network)
    model = make().double().eval()
    x = torch.rand(5, *shape, dtype=torch.float64)
    threat = ThreatModel(norm, eps if norm == "linf" else 4 * eps)
    methods = [("ibp", 2048, "ibp", 2048)]
    if crown:
        methods += [("crown-ibp", 2048, "crown", 0), ("crown", 100_000, "crown", 100_000),
                    ("ibp+crown", 2048, "ibp+crown", 2048)]
    for method, neurons, reference, reference_neurons in methods:
        expected = reference_bounds.certify_bounds(model, x, threat, reference, reference_neurons)
        predicted, margin = certify_bounds(model, x, threat, method, neurons)
        assert torch.equal(predicted, expected[0]), method
        assert torch.allclose(margin, expected[1], rtol=0, atol=1e-6), method
    layers = reference_bounds.reference_layers(model)
    specification = margin_specification(predicted, model(x).shape[1], torch.float64)
    with torch.no_grad():
        traced_low = interval_bounds(model, x, threat, specification)[0]
        assert torch.allclose(traced_low, reference_bounds.interval_bounds(
            layers, x, threat, specification)[0], atol=1e-6)
        assert torch.equal(traced_low, interval_bounds(layers, x, threat, specification)[0])
        if crown:
            assert torch.allclose(crown_bounds(model, x, threat, specification, 100_000),
                                  reference_bounds.crown_bounds(layers, x, threat,
                                                                specification, 100_000),
                                  atol=1e-6)


class TinyResidual(nn.Module):
    """``h = W1 x``, ``s = W2 relu(h) + h``, logits ``W3 [relu(s), relu(h)]``: a residual sum
    and a concatenation, small enough for an exact mixed-integer program."""

    def __init__(self, inputs: int = 3, hidden: int = 5, classes: int = 3) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(inputs, hidden), nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(2 * hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        r = torch.relu(h)
        s = self.fc2(r) + h
        return self.fc3(torch.cat([F.relu(s), r], dim=1))


def _exact_minimum(model: TinyResidual, x: np.ndarray, eps: float, row: np.ndarray,
                   bounds: list[tuple[np.ndarray, np.ndarray]]) -> float:
    """``min row · f(x')`` over the Linf box ∩ [0, 1], exactly: the ReLUs by big-M constraints
    from sound bounds of their inputs, with binary indicators. Variables ``x, h, r, s, t, z_r,
    z_t`` (``r = relu(h)``, ``t = relu(s)``)."""
    def numpy(layer):
        return layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()
    (w1, b1), (w2, b2), (w3, b3) = numpy(model.fc1), numpy(model.fc2), numpy(model.fc3)
    n, k = len(x), len(b1)
    offsets = {name: n + index * k for index, name in enumerate(["h", "r", "s", "t", "zr", "zt"])}
    offsets["x"] = 0
    count = n + 6 * k
    rows, lower, upper = [], [], []

    def constraint(terms: dict[str, np.ndarray], low: float, high: float, unit: int) -> None:
        line = np.zeros(count)
        for name, values in terms.items():
            if name in ("x",):
                line[: n] += values
            else:
                line[offsets[name] + unit] += values
        rows.append(line)
        lower.append(low)
        upper.append(high)

    for unit in range(k):
        line = np.zeros(count)  # h = W1 x + b1
        line[:n] = -w1[unit]
        line[offsets["h"] + unit] = 1
        rows.append(line), lower.append(b1[unit]), upper.append(b1[unit])
        line = np.zeros(count)  # s = W2 r + b2 + h
        line[offsets["r"]:offsets["r"] + k] = -w2[unit]
        line[offsets["h"] + unit] -= 1
        line[offsets["s"] + unit] = 1
        rows.append(line), lower.append(b2[unit]), upper.append(b2[unit])
        for inner, out, indicator, (low, high) in (("h", "r", "zr", bounds[0]),
                                                    ("s", "t", "zt", bounds[1])):
            bottom, top = float(low[unit]), float(high[unit])
            constraint({out: 1.0, inner: -1.0}, 0.0, np.inf, unit)  # out >= inner
            constraint({out: 1.0, indicator: -top}, -np.inf, 0.0, unit)  # out <= u z
            # out <= inner - l (1 - z)
            constraint({out: 1.0, inner: -1.0, indicator: -bottom}, -np.inf, -bottom, unit)
    objective = np.zeros(count)
    weight = row @ w3
    objective[offsets["t"]:offsets["t"] + k] = weight[:k]
    objective[offsets["r"]:offsets["r"] + k] = weight[k:]
    variable_low, variable_high = np.full(count, -np.inf), np.full(count, np.inf)
    variable_low[:n], variable_high[:n] = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
    for name in ("r", "t", "zr", "zt"):
        variable_low[offsets[name]:offsets[name] + k] = 0
    for name in ("zr", "zt"):
        variable_high[offsets[name]:offsets[name] + k] = 1
    integrality = np.zeros(count)
    integrality[offsets["zr"]:] = 1
    result = milp(objective, constraints=LinearConstraint(np.array(rows), lower, upper),
                  integrality=integrality, bounds=Bounds(variable_low, variable_high))
    assert result.status == 0, result.message
    return float(result.fun + row @ b3)


def test_on_tiny_residual_networks_ibp_and_crown_lie_below_the_exact_optimum():
    """20 random residual networks, every margin row: IBP ≤ the better of IBP and CROWN ≤ the
    exact minimum (mixed-integer program), CROWN-IBP below it too, and CROWN tighter than IBP on
    most rows."""
    tighter, rows_seen = 0, 0
    for seed in range(20):
        torch.manual_seed(seed)
        model = TinyResidual().double().eval()
        x = torch.rand(1, 3, dtype=torch.float64)
        threat = ThreatModel("linf", 0.15)
        specification = margin_specification(model(x).argmax(dim=1), 3, torch.float64)
        with torch.no_grad():
            ibp = interval_bounds(model, x, threat, specification)[0][0]
            crown = crown_bounds(model, x, threat, specification)[0]
            crown_ibp = crown_bounds(model, x, threat, specification, crown_neurons=0)[0]
            _, relu_bounds = preactivation_bounds(model, x, threat, crown_neurons=0)
        bounds = [(low[0].numpy(), high[0].numpy())
                  for _, (low, high) in sorted(relu_bounds.items())]
        for index, row in enumerate(specification[0].numpy()):
            exact = _exact_minimum(model, x[0].numpy(), 0.15, row, bounds)
            best = max(float(ibp[index]), float(crown[index]))
            assert float(ibp[index]) <= best <= exact + 1e-7
            assert float(crown_ibp[index]) <= exact + 1e-7
            tighter += float(crown[index]) > float(ibp[index]) + 1e-9
            rows_seen += 1
    assert tighter > 0.5 * rows_seen, f"CROWN tighter than IBP on {tighter} of {rows_seen}"


def _randomized_statistics(model: nn.Module) -> nn.Module:
    """Batch norms with random running statistics and affine parameters, in eval mode."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()


RESIDUAL = {
    "ResNet": lambda: ResNet(depth=8, width=2, input_size=8, num_classes=4),
    "WideResNet": lambda: WideResNet(depth=10, widen_factor=1, input_size=8, num_classes=4),
}
RADII = {("ResNet", "linf"): 0.01, ("ResNet", "l2"): 0.06, ("WideResNet", "linf"): 0.003,
         ("WideResNet", "l2"): 0.03}
"""Radii at which the best of the methods certifies some of the test inputs."""


@pytest.mark.parametrize("name", sorted(RESIDUAL))
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_residual_networks_bounds_hold_sampled_points_and_no_certified_input_flips(name, norm):
    torch.manual_seed(0)
    model = _randomized_statistics(RESIDUAL[name]())
    x = torch.rand(8, 3, 8, 8)
    eps = RADII[name, norm]
    threat = ThreatModel(norm, eps)
    margins = {method: certify_bounds(model, x, threat, method)
               for method in ("ibp", "crown-ibp", "crown", "ibp+crown")}
    predicted = margins["ibp"][0]
    for method, (answers, _) in margins.items():
        assert torch.equal(answers, predicted), method
    assert (margins["ibp+crown"][1] >= margins["ibp"][1] - 1e-6).all()
    assert (margins["crown"][1] >= margins["ibp"][1]).float().mean() > 0.5
    lowest = torch.stack([margin for _, margin in margins.values()]).max(dim=0).values
    with torch.no_grad():
        specification = margin_specification(predicted, 4)
        for _ in range(30):
            delta = torch.randn_like(x)
            delta = (delta.sign() * eps if norm == "linf" else
                     eps * delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
            sampled = (specification @ model((x + delta).clamp(0, 1)).unsqueeze(2)).squeeze(2)
            assert (sampled.min(dim=1).values >= lowest - 1e-5).all()
    certified = lowest > 0
    assert certified.any()
    x_adv = make_attack("pgd", steps=20)(model, x, predicted, threat)
    flipped = model(x_adv).argmax(dim=1) != predicted
    assert not (certified & flipped).any()


class ExtraWork(nn.Module):
    """A model with a ``layers`` attribute whose forward does more than apply them: the traced
    forward is what is bounded."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 3))
        self.register_buffer("mean", torch.tensor([[0.5, 0.4, 0.3]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(4 * (x - self.mean) / 0.5)


class EveryOperation(nn.Module):
    """Convolutions with a concatenation, a subtraction of two branches, functional average and
    adaptive average pooling, shifts and scalings by constants, a ``view`` from the batch size,
    dropout and ``contiguous``."""

    def __init__(self) -> None:
        super().__init__()
        self.normalize = Normalize([0.5, 0.4], [0.3, 0.2])
        self.left, self.right = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(2, 3, 1)
        self.mix, self.shift = nn.Conv2d(6, 4, 3, padding=1), nn.Conv2d(2, 4, 1)
        self.dropout = nn.Dropout(0.3)
        self.fc = nn.Linear(4 * 2 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.normalize(x)
        both = torch.cat([F.relu(self.left(z)), self.right(z).relu()], dim=1)
        mixed = F.avg_pool2d(self.mix(both) - self.shift(z), 2)
        pooled = (1 - F.adaptive_avg_pool2d(torch.relu(mixed), 2)) / 2
        return self.fc(self.dropout(pooled.contiguous()).view(pooled.size(0), -1))


def test_every_covered_operation_is_bounded_soundly():
    torch.manual_seed(4)
    threat = ThreatModel("linf", 0.02)
    for model, x in ((ExtraWork().eval(), torch.rand(8, 3)),
                     (EveryOperation().eval(), torch.rand(8, 2, 8, 8))):
        classes = model(x).shape[1]
        specification = margin_specification(model(x).argmax(dim=1), classes)
        with torch.no_grad():
            low, high = interval_bounds(model, x, threat)
            crown = crown_bounds(model, x, threat, specification, 100_000)
            for _ in range(40):
                point = (x + threat.eps * torch.randn_like(x).sign()).clamp(0, 1)
                out = model(point)
                assert (out >= low - 1e-5).all() and (out <= high + 1e-5).all()
                sampled = (specification @ out.unsqueeze(2)).squeeze(2)
                assert (sampled >= crown - 1e-5).all()


class Unbounded(nn.Module):
    def __init__(self, activation: str) -> None:
        super().__init__()
        self.activation = activation
        self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 2)
        self.gelu = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)
        if self.activation == "gelu":
            h = self.gelu(h)
        elif self.activation == "sigmoid":
            h = torch.sigmoid(h)
        elif self.activation == "square":
            h = h * h
        return self.fc2(h)


@pytest.mark.parametrize(("activation", "named"), [
    ("gelu", "GELU"), ("sigmoid", "sigmoid"), ("square", "two computed tensors")])
def test_an_operation_without_a_rule_is_refused_by_name_before_any_bound(activation, named):
    model = Unbounded(activation).eval()
    with pytest.raises(ValueError, match=named):
        traced(model)
    with pytest.raises(ValueError, match=named):
        certify_bounds(model, torch.rand(2, 3), ThreatModel("linf", 0.1))


def test_a_model_whose_layer_was_replaced_is_traced_again():
    torch.manual_seed(6)
    model = MLP(4, 3, (8,)).eval()
    x, threat = torch.rand(5, 4), ThreatModel("linf", 0.05)
    before = interval_bounds(model, x, threat)[0]
    model.layers[2] = nn.Linear(8, 3)
    with torch.no_grad():
        after = interval_bounds(model, x, threat)[0]
        assert not torch.allclose(before, after)
        assert (model(x) >= after - 1e-6).all()
    assert traced(model).last_layer is model.layers[2]


def test_batch_norm_in_train_mode_is_bounded_by_batch_statistics_for_training_only():
    torch.manual_seed(5)
    model = ResNet(depth=8, width=2, input_size=8, num_classes=4).train()
    x = torch.rand(6, 3, 8, 8)
    threat = ThreatModel("linf", 0.01)
    specification = margin_specification(torch.zeros(6, dtype=torch.long), 4)
    low, high = interval_bounds(model, x, threat, specification)
    low.sum().backward()  # trainable through the bounds
    assert model.stem[0].weight.grad is not None
    with torch.no_grad():  # at zero radius, the bounds are the train-mode forward's output
        exact = interval_bounds(model, x, threat.scaled(0), specification)[0]
        assert torch.allclose(exact, (specification @ model(x).unsqueeze(2)).squeeze(2),
                              atol=1e-4)
    with pytest.raises(ValueError, match="eval mode"):
        certify_bounds(model, x, threat)
    with pytest.raises(ValueError, match="eval mode"):
        crown_bounds(model, x, threat, specification)
    with pytest.raises(ValueError, match="max pooling"):
        crown_bounds(SmallCNN().eval(), torch.rand(1, 1, 28, 28), threat,
                     margin_specification(torch.zeros(1, dtype=torch.long), 10))
