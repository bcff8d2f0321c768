"""Bound propagation against known answers: exact for linear models, and on tiny ReLU networks
between the triangle relaxation's LP and the exact mixed-integer program."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import nn

from benchmarks.support import reference_bounds
from robustgate.attacks import make_attack
from robustgate.certify import (
    BOUND_METHODS,
    bounds,
    certify_bounds,
    crown_bounds,
    interval_bounds,
    interval_certificates,
    margin_specification,
    preactivation_bounds,
)
from robustgate.models import MLP, SmallCNN, StridedCNN
from robustgate.models.normalize import Normalize
from robustgate.threat import ThreatModel
from tests.conftest import random_linear


def exact_linear_margin(model, x, threat):
    """``min_{j≠ŷ}`` of the exact minimum of ``(w_ŷ − w_j)·x' + b_ŷ − b_j`` over the ball ∩ the
    domain (for L2, a ball inside the domain)."""
    weight, bias = model.linear.weight.detach(), model.linear.bias.detach()
    predicted = model(x).argmax(dim=1)
    rows = margin_specification(predicted, weight.shape[0])
    c, d = rows @ weight, rows @ bias
    if threat.norm == "linf":
        low, high = (x - threat.eps).clamp(0, 1), (x + threat.eps).clamp(0, 1)
        value = (c.clamp(min=0) * low.unsqueeze(1) + c.clamp(max=0) * high.unsqueeze(1)).sum(2)
    else:
        value = (c * x.unsqueeze(1)).sum(2) - threat.eps * c.norm(dim=2)
    return (value + d).min(dim=1).values


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_ibp_and_crown_are_exact_for_a_linear_model(norm):
    model = random_linear(5, dim=4, seed=0)
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(64, 4, generator=generator)
    if norm == "l2":
        x = 0.2 + 0.6 * x  # the ball stays inside the domain
    threat = ThreatModel(norm, 0.15)
    layers = nn.Sequential(model.linear)
    exact = exact_linear_margin(model, x, threat)
    for method in ("ibp", "crown"):
        _, margin = certify_bounds(layers, x, threat, method)
        assert torch.allclose(margin, exact, atol=1e-5), method


def _mlp_programs(model: MLP, x: np.ndarray, eps: float, row: np.ndarray,
                  bounds: list[tuple[np.ndarray, np.ndarray]], integral: bool) -> float:
    """Minimize ``row · f(x')`` over the Linf box ∩ [0, 1] with the ReLUs encoded by big-M
    constraints from ``bounds`` (their pre-activation bounds): binary indicators give the exact
    mixed-integer program, relaxed ones the triangle relaxation's LP (``milp`` solves both)."""
    linears = [layer for layer in model.layers if isinstance(layer, nn.Linear)]
    weights = [(lin.weight.detach().double().numpy(), lin.bias.detach().double().numpy())
               for lin in linears]
    sizes = [len(x)] + [w.shape[0] for w, _ in weights[:-1]]
    # variables: input, then per hidden layer (pre-activation z, post h, indicator d)
    offsets, count = [0], len(x)
    for size in sizes[1:]:
        offsets.append(count)
        count += 3 * size
    rows, lower, upper = [], [], []

    def constraint(coefficients: dict[int, float], low: float, high: float) -> None:
        line = np.zeros(count)
        for index, value in coefficients.items():
            line[index] += value
        rows.append(line)
        lower.append(low)
        upper.append(high)

    previous = list(range(len(x)))
    for layer, size in enumerate(sizes[1:]):
        weight, bias = weights[layer]
        start = offsets[layer + 1]
        low, high = bounds[layer]
        for unit in range(size):
            z, h, d = start + unit, start + size + unit, start + 2 * size + unit
            constraint({z: 1.0, **{p: -weight[unit, k] for k, p in enumerate(previous)}},
                       bias[unit], bias[unit])
            constraint({h: 1.0, z: -1.0}, 0.0, np.inf)
            constraint({h: 1.0, d: -high[unit]}, -np.inf, 0.0)
            constraint({h: 1.0, z: -1.0, d: -low[unit]}, -np.inf, -low[unit])
        previous = [start + size + unit for unit in range(size)]
    weight, bias = weights[-1]
    objective = np.zeros(count)
    for k, p in enumerate(previous):
        objective[p] = row @ weight[:, k]
    box_low = np.clip(x - eps, 0, 1)
    box_high = np.clip(x + eps, 0, 1)
    variable_low, variable_high = np.full(count, -np.inf), np.full(count, np.inf)
    variable_low[: len(x)], variable_high[: len(x)] = box_low, box_high
    integrality = np.zeros(count)
    for layer, size in enumerate(sizes[1:]):
        start = offsets[layer + 1]
        variable_low[start + size : start + 2 * size] = 0
        variable_low[start + 2 * size : start + 3 * size] = 0
        variable_high[start + 2 * size : start + 3 * size] = 1
        integrality[start + 2 * size : start + 3 * size] = 1 if integral else 0
    result = milp(objective, constraints=LinearConstraint(np.array(rows), lower, upper),
                  integrality=integrality, bounds=Bounds(variable_low, variable_high))
    assert result.status == 0, result.message
    return float(result.fun + row @ bias)


def test_on_tiny_relu_networks_ibp_and_crown_lie_below_the_lp_and_the_exact_bound():
    """20 random networks (3 inputs, two hidden layers of 5), one input each, every margin row:
    IBP ≤ exact, CROWN ≤ LP ≤ exact (the LP given CROWN's intermediate bounds), and CROWN
    strictly tighter than IBP on most rows."""
    tighter, rows_seen = 0, 0
    for seed in range(20):
        torch.manual_seed(seed)
        model = MLP(3, 3, (5, 5)).double().eval()
        x = torch.rand(1, 3, dtype=torch.float64)
        threat = ThreatModel("linf", 0.1)
        layers = model
        specification = margin_specification(model(x).argmax(dim=1), 3).double()
        with torch.no_grad():
            ibp = interval_bounds(layers, x, threat, specification)[0][0]
            crown = crown_bounds(layers, x, threat, specification)[0]
            _, relu_bounds = preactivation_bounds(layers, x, threat)
        bounds = [(low[0].numpy(), high[0].numpy()) for low, high in relu_bounds.values()]
        for index, row in enumerate(specification[0].numpy()):
            exact = _mlp_programs(model, x[0].numpy(), 0.1, row, bounds, integral=True)
            relaxed = _mlp_programs(model, x[0].numpy(), 0.1, row, bounds, integral=False)
            assert float(ibp[index]) <= exact + 1e-7
            assert float(crown[index]) <= relaxed + 1e-7 <= exact + 2e-7
            tighter += float(crown[index]) > float(ibp[index]) + 1e-9
            rows_seen += 1
    assert tighter > 0.5 * rows_seen, f"CROWN tighter than IBP on {tighter} of {rows_seen}"


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["linf", "l2"]), st.floats(0.01, 0.2))
def test_bounds_hold_the_outputs_of_sampled_points_and_no_attacked_flip_is_certified(
        seed, norm, eps):
    torch.manual_seed(seed)
    model = MLP(4, 3, (8, 8)).eval()
    x = torch.rand(16, 4)
    threat = ThreatModel(norm, eps)
    layers = model
    with torch.no_grad():
        predicted = model(x).argmax(dim=1)
        specification = margin_specification(predicted, 3)
        lowest = torch.stack([interval_bounds(layers, x, threat, specification)[0],
                              crown_bounds(layers, x, threat, specification)]).max(dim=0).values
        for _ in range(20):
            delta = torch.randn_like(x)
            delta = (delta.sign() * eps if norm == "linf"
                     else eps * torch.rand(16, 1) * delta / delta.norm(dim=1, keepdim=True))
            sampled = (specification @ model((x + delta).clamp(0, 1)).unsqueeze(2)).squeeze(2)
            assert (sampled >= lowest - 1e-5).all()
    certified = lowest.min(dim=1).values > 0
    x_adv = make_attack("pgd", steps=30)(model, x, predicted, threat)
    flipped = model(x_adv).argmax(dim=1) != predicted
    assert not (certified & flipped).any()


def test_convolutional_models_are_bounded_and_max_pooling_by_ibp_only():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 28, 28)
    threat = ThreatModel("linf", 0.01)
    strided = StridedCNN().eval()
    for method in ("ibp", "crown", "ibp+crown"):
        predicted, margin = certify_bounds(strided, x, threat, method, crown_neurons=600)
        assert margin.shape == (3,) and torch.isfinite(margin).all()
    predicted, ibp = certify_bounds(strided, x, threat, "ibp")
    _, both = certify_bounds(strided, x, threat, "ibp+crown", crown_neurons=4096)
    assert (both >= ibp - 1e-6).all()
    specification = margin_specification(predicted, 10)
    with torch.no_grad():  # every sampled corner of the box keeps its margin above the bound
        for _ in range(30):
            corner = (x + 0.01 * torch.sign(torch.randn_like(x))).clamp(0, 1)
            sampled = (specification @ strided(corner).unsqueeze(2)).squeeze(2).min(dim=1)
            assert (sampled.values >= both - 1e-4).all()
    small = SmallCNN().eval()
    certify_bounds(small, x, threat, "ibp")
    with pytest.raises(ValueError, match="max pooling"):
        certify_bounds(small, x, threat, "crown")
    with pytest.raises(ValueError, match="method"):
        certify_bounds(small, x, threat, "lp")


def test_ibp_loss_schedule_and_its_worst_case_bound():
    from robustgate.losses import make_loss

    torch.manual_seed(0)
    model = MLP(2, 3, (8,)).eval()
    x, y = torch.rand(32, 2), torch.randint(0, 3, (32,))
    natural = torch.nn.functional.cross_entropy(model(x), y, reduction="none")
    loss = make_loss("ibp", ThreatModel("linf", 0.1), warmup_epochs=1, ramp_epochs=2)
    loss.set_epoch(0.5)
    assert torch.allclose(loss(model, x, y), natural)  # warm-up: natural loss only
    loss.set_epoch(2.0)
    assert loss.ramp == 0.5
    halfway = loss(model, x, y)
    loss.set_epoch(10)
    full = loss(model, x, y)
    assert (halfway >= natural - 1e-6).all() and (full >= halfway - 1e-6).all()
    at_zero = make_loss("ibp", ThreatModel("linf", 0.0), warmup_epochs=0, ramp_epochs=0,
                        final_natural_weight=0.0)
    assert torch.allclose(at_zero(model, x, y), natural, atol=1e-5)
    with pytest.raises(ValueError, match="final_natural_weight"):
        make_loss("ibp", ThreatModel("linf", 0.1), final_natural_weight=2)


def test_certified_era_pushes_an_inaccurate_sample_below_certification():
    from robustgate.losses import make_loss

    torch.manual_seed(0)
    model = MLP(2, 2, (8,))
    x, wrong = torch.tensor([[0.9, 0.5]]), torch.tensor([1])
    threat = ThreatModel("linf", 0.05)
    with torch.no_grad():
        model.layers[-1].bias.copy_(torch.tensor([3.0, -3.0]))  # confidently class 0
    loss = make_loss("cert_era", threat, beta=0.0)
    before = float(certify_bounds(model.eval(), x, threat)[1])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(30):
        optimizer.zero_grad()
        loss(model, x, wrong).sum().backward()
        optimizer.step()
    after = float(certify_bounds(model.eval(), x, threat)[1])
    assert before > 0 and after < before


def test_a_composition_of_bound_selectors_exports_and_answers_alike(tmp_path):
    from robustgate.attacks import make_attack
    from robustgate.compose import ComposedClassifier
    from robustgate.select import BoundSelector, RobustnessSelector

    threat = ThreatModel("linf", 0.05)
    first, second, core = (nn.Sequential(random_linear(3, 2, seed).linear) for seed in (1, 2, 3))
    composed = ComposedClassifier.chain(
        [(first, BoundSelector(first, threat, "ibp")),
         (second, BoundSelector(second, threat, "ibp", kappa=2))], core)
    x = torch.rand(400, 2, generator=torch.Generator().manual_seed(0))
    path = composed.export(tmp_path / "composed.pt2", x[:4])
    loaded = torch.export.load(path).module()
    labels, routes = composed.predict(x)
    exported_labels, exported_routes = loaded(x)
    assert torch.equal(exported_labels, labels) and torch.equal(exported_routes, routes)
    assert set(routes.tolist()) == {0, 1, 2}
    torch.manual_seed(0)
    branch, cnn_core = StridedCNN().eval(), StridedCNN().eval()
    images = torch.rand(20, 1, 28, 28)
    convolutional = ComposedClassifier(branch, BoundSelector(branch, threat), cnn_core)
    exported = torch.export.load(convolutional.export(tmp_path / "cnn.pt2", images[:2])).module()
    assert all(torch.equal(a, b) for a, b in zip(exported(images),
                                                 convolutional.predict(images), strict=True))
    attacked = ComposedClassifier(first, RobustnessSelector(first, threat, make_attack("pgd")),
                                  core)
    with pytest.raises(ValueError, match="only bound selectors"):
        attacked.export(tmp_path / "no.pt2", x[:4])
    assert not (tmp_path / "no.pt2").exists()


@pytest.mark.parametrize(("method", "eps"), [("crown", 0.004), ("crown-ibp", 0.003),
                                             ("ibp+crown", 0.004)])
def test_a_crown_selector_exports_and_answers_as_in_python(tmp_path, method, eps):
    """The CROWN methods' exporting form (every unit of a tightened layer, the whole batch at
    once, the prediction from a forward pass) gives :func:`certify_bounds`'s predictions and
    margins (to float32 summation order), and a composition under a CROWN bound selector exports
    as one program that answers like the Python object, on a CNN whose hidden layer CROWN
    tightens (its convolutions are above ``crown_neurons``: IBP there, as in Python)."""
    from robustgate.certify import crown_certificates
    from robustgate.compose import ComposedClassifier
    from robustgate.select import BoundSelector

    torch.manual_seed(0)
    branch, core = StridedCNN(channels=(4, 8), hidden=32).eval(), StridedCNN().eval()
    images = torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    threat = ThreatModel("linf", eps)
    predicted, margin = certify_bounds(branch, images, threat, method)
    exported_form = crown_certificates(branch, images, threat, method)
    assert torch.equal(exported_form[0], predicted)
    assert torch.allclose(exported_form[1], margin, atol=1e-5, rtol=0)
    assert 0 < int((margin > 0).sum()) < len(images)  # some certified, some not
    composed = ComposedClassifier(branch, BoundSelector(branch, threat, method), core)
    program = torch.export.load(composed.export(tmp_path / "crown.pt2", images[:2])).module()
    labels, routes = program(images)
    expected_labels, expected_routes = composed.predict(images)
    assert torch.equal(labels, expected_labels) and torch.equal(routes, expected_routes)
    with pytest.raises(ValueError, match="CROWN methods"):
        crown_certificates(branch, images, threat, "ibp")


def test_review_cases_padding_crown_stability_and_radius_round_trip(tmp_path):
    from robustgate.evaluate import BoundCertificates, Records, Selection

    reflect = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect"), nn.Flatten(),
                            nn.Linear(2 * 28 * 28, 3))
    with pytest.raises(ValueError, match="padding_mode='reflect'"):
        certify_bounds(reflect, torch.rand(1, 1, 28, 28), ThreatModel("linf", 0.01))
    # a CROWN-only selector counts no stability, and selects where CROWN certifies only
    crown = Records([0, 0], [0, 0], {0.1: [False, True], 0.2: [False, False]})
    interval = Records([0, 0], [0, 0], {0.1: [True, False], 0.2: [True, False]})
    alone = Selection.bounds(crown, interval, 0.1, with_interval_bounds=False)
    assert alone.selected.tolist() == [False, True] and not alone.stable.any()
    radius = 8 / 255
    certificates = BoundCertificates([0], [0], {radius: [0.5]}, [0.1])
    certificates.to_csv(tmp_path / "c.csv")
    assert BoundCertificates.read_csv(tmp_path / "c.csv").records().robust_at(radius).all()
    Records([0], [0], {radius: [True]}).to_csv(tmp_path / "r.csv")
    assert Records.read_csv(tmp_path / "r.csv").robust_at(radius).all()


@pytest.mark.parametrize(("fraction", "weight"), [(1.0, 1.0), (0.5, 3.0)])
def test_certified_era_certifies_on_the_training_ball_and_abstains_on_its_fraction(fraction,
                                                                                 weight):
    """For a two-class linear model the IBP bound of ``f_a − f_b`` over an Linf ball inside the
    domain is exact, ``(w_a − w_b)·x + b_a − b_b − eps·‖w_a − w_b‖₁``: the loss is the formula
    of ``CertifiedERA`` with the worst case over ``eps`` and the certified margin over
    ``fraction·eps``."""
    from robustgate.losses import make_loss

    model = nn.Sequential(random_linear(2, 4, seed=5).linear)
    model.num_classes = 2
    x = 0.3 + 0.4 * torch.rand(16, 4, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 2, (16,), generator=torch.Generator().manual_seed(2))
    eps = 0.1
    loss = make_loss("cert_era", ThreatModel("linf", eps), beta=0.5, abstain_fraction=fraction,
                     abstain_weight=weight)
    with torch.no_grad():
        logits = model(x)
        difference = model[0].weight[0] - model[0].weight[1]
        margin_0 = logits[:, 0] - logits[:, 1]  # f_0 − f_1
        sign = {label: 1 - 2 * label for label in (0, 1)}

        def exact_lower(labels: torch.Tensor, radius: float) -> torch.Tensor:
            signs = torch.tensor([sign[int(label)] for label in labels])
            return signs * margin_0 - radius * difference.abs().sum()

        p_y = logits.softmax(1).gather(1, y.view(-1, 1)).squeeze(1)
        worst = torch.nn.functional.softplus(-exact_lower(y, eps))  # CE of (0, −m) towards 0
        certified = exact_lower(logits.argmax(1), fraction * eps)
        natural = torch.nn.functional.cross_entropy(logits, y, reduction="none")
        expected = (p_y * worst + weight * (1 - p_y) * torch.nn.functional.softplus(certified)
                    + 0.5 * natural)
        assert torch.allclose(loss(model, x, y), expected, atol=1e-5)
    with pytest.raises(ValueError, match="abstain_fraction"):
        make_loss("cert_era", ThreatModel("linf", eps), abstain_fraction=0.0)
    with pytest.raises(ValueError, match="abstain_weight"):
        make_loss("cert_era", ThreatModel("linf", eps), abstain_weight=-1.0)


def _pooled_network() -> nn.Sequential:
    """Every layer kind CROWN bounds: Normalize, convolutions, eval-mode batch normalization,
    average pooling, flattening, linear layers."""
    torch.manual_seed(3)
    batch_norm = nn.BatchNorm2d(4)
    with torch.no_grad():
        batch_norm.running_mean.uniform_(-0.2, 0.2)
        batch_norm.running_var.uniform_(0.5, 2)
        batch_norm.weight.uniform_(0.5, 1.5)
    return nn.Sequential(Normalize(0.5, 0.3), nn.Conv2d(1, 4, 3, padding=1), batch_norm,
                         nn.ReLU(), nn.AvgPool2d(2), nn.Conv2d(4, 6, 3, stride=2, padding=1),
                         nn.ReLU(), nn.Flatten(), nn.Linear(6 * 3 * 3, 12), nn.ReLU(),
                         nn.Linear(12, 5)).eval()


NETWORKS = [
    (lambda: MLP(4, 3, (8, 8)).eval(), (4,), 0.1),
    (lambda: StridedCNN(channels=(4, 8), hidden=20, input_size=12).eval(), (1, 12, 12), 0.03),
    (_pooled_network, (1, 12, 12), 0.03),
]


@pytest.mark.parametrize("network", range(len(NETWORKS)))
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_the_rules_give_the_reference_implementations_bounds(network, norm, monkeypatch):
    """Against the autograd implementation this one replaced
    (``benchmarks/support/reference_bounds.py``): the same predictions and margins to 1e-5 by
    every method, with CROWN intermediate bounds on every layer or on none, and in chunks of a
    single input."""
    make, shape, eps = NETWORKS[network]
    torch.manual_seed(network)
    model = make()
    x = torch.rand(6, *shape)
    threat = ThreatModel(norm, eps if norm == "linf" else 4 * eps)
    cases = [("ibp", 2048, {}), ("crown-ibp", 2048, {"method": "crown", "crown_neurons": 0}),
             *[(method, neurons, {}) for method in ("crown", "ibp+crown")
               for neurons in (2048, 100_000)]]
    for method, crown_neurons, reference in cases:
        settings = {"method": method, "crown_neurons": crown_neurons} | reference
        expected = reference_bounds.certify_bounds(model, x, threat, **settings)
        predicted, margin = certify_bounds(model, x, threat, method, crown_neurons)
        assert torch.equal(predicted, expected[0]), method
        assert torch.allclose(margin, expected[1], atol=1e-5), (method, crown_neurons)
    monkeypatch.setattr(bounds, "CHUNK_ELEMENTS", 1)
    chunked = certify_bounds(model, x, threat, "ibp+crown", 100_000)[1]
    assert torch.allclose(chunked, expected[1], atol=1e-5)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(["linf", "l2"]), st.floats(0.005, 0.1))
def test_convolutional_bounds_hold_the_outputs_of_sampled_points(seed, norm, eps):
    torch.manual_seed(seed)
    model = _pooled_network() if seed % 2 else StridedCNN(channels=(4, 8), hidden=20,
                                                          input_size=12).eval()
    x = torch.rand(6, 1, 12, 12)
    threat = ThreatModel(norm, eps if norm == "linf" else 5 * eps)
    layers = model
    with torch.no_grad():
        predicted = model(x).argmax(dim=1)
        specification = margin_specification(predicted, 5 if seed % 2 else 10)
        lowest = {"crown": crown_bounds(layers, x, threat, specification, 100_000),
                  "crown-ibp": crown_bounds(layers, x, threat, specification, 0)}
        for _ in range(20):
            delta = torch.randn_like(x)
            delta = (delta.sign() * eps if norm == "linf" else
                     5 * eps * torch.rand(6, 1, 1, 1) * delta / delta.flatten(1).norm(dim=1).view(
                         -1, 1, 1, 1))
            sampled = (specification @ model((x + delta).clamp(0, 1)).unsqueeze(2)).squeeze(2)
            for method, lower in lowest.items():
                assert (sampled >= lower - 1e-5).all(), method


SOME_CERTIFIED = {"ibp": 0.003, "crown-ibp": 0.008, "crown": 0.035, "ibp+crown": 0.035}
"""A radius per method at which it certifies some of the inputs of the tests below, not all."""


def test_certify_bounds_runs_the_clean_forward_on_the_uncertified_inputs_only():
    """Only on those IBP leaves uncertified for ``ibp``; for the CROWN methods the class pairs
    are bounded by intervals from CROWN's ReLU bounds, which certify fewer than CROWN itself, so
    the forward pass runs on at most every input once."""
    torch.manual_seed(4)
    model = StridedCNN(channels=(4, 8), hidden=20, input_size=12).eval()
    x = torch.rand(40, 1, 12, 12)
    seen = []
    model.register_forward_hook(lambda module, inputs, output: seen.append(len(inputs[0])))
    for method in BOUND_METHODS:
        seen.clear()
        threat = ThreatModel("linf", SOME_CERTIFIED[method])
        predicted, margin = certify_bounds(model, x, threat, method)
        certified = int((margin > 0).sum())
        assert 0 < certified < len(x), "the test needs both kinds of input"
        assert sum(seen) <= (len(x) - certified if method == "ibp" else len(x))
        assert torch.equal(predicted, model(x).argmax(dim=1))
    threat = ThreatModel("linf", SOME_CERTIFIED["ibp"])
    classes, best = interval_certificates(model, x, threat)
    _, margin = certify_bounds(model, x, threat, "ibp")
    assert torch.equal(best > 0, margin > 0)
    assert torch.equal(classes[margin > 0], model(x).argmax(dim=1)[margin > 0])


def test_the_bound_selector_answers_with_its_certified_class_and_decides_alike():
    from robustgate.compose import ComposedClassifier
    from robustgate.select import BoundSelector

    torch.manual_seed(5)
    branch = StridedCNN(channels=(4, 8), hidden=20, input_size=12).eval()
    core = StridedCNN(channels=(4, 8), hidden=20, input_size=12).eval()
    x = torch.rand(60, 1, 12, 12)
    calls = []
    branch.register_forward_hook(lambda module, inputs, output: calls.append(len(inputs[0])))
    for method in BOUND_METHODS:
        selector = BoundSelector(branch, ThreatModel("linf", SOME_CERTIFIED[method]), method)
        selected, answers = selector.select_and_answer(x)
        assert torch.equal(selected, selector.select(x))
        assert torch.equal(selected, selector.margin(x) > 0)  # the decision of the margin
        assert 0 < int(selected.sum()) < len(x)
        calls.clear()
        labels, routes = ComposedClassifier(branch, selector, core).predict(x)
        # the branch runs once at most (never, by IBP), never again on the inputs selected
        assert sum(calls) <= (0 if method == "ibp" else len(x))
        expected = torch.where(selected, branch(x).argmax(dim=1), core(x).argmax(dim=1))
        assert torch.equal(labels, expected) and torch.equal(routes, (~selected).long())
    with pytest.raises(ValueError, match="build it on the branch"):
        ComposedClassifier(core, BoundSelector(branch, ThreatModel("linf", 0.01)), core)
