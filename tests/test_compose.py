import pytest
import torch
from conftest import Linear, exact_radius, random_linear

from robustgate import ComposedClassifier, ThreatModel
from robustgate.attacks import PGD
from robustgate.evaluate import Selection, compose_records, evaluate_model
from robustgate.models import MLP
from robustgate.select import RobustnessSelector


class MaskSelector:
    """Selects the inputs whose first feature is below a threshold."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold

    def select(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0] < self.threshold


def constant(label: int, num_classes: int = 3) -> Linear:
    bias = torch.zeros(num_classes)
    bias[label] = 1.0
    return Linear(torch.zeros(num_classes, 2), bias)


def test_a_chain_of_two_branches_routes_as_specified():
    x = torch.tensor([[0.1, 0.5], [0.4, 0.5], [0.8, 0.5], [0.25, 0.1]])
    composed = ComposedClassifier.chain(
        [(constant(0), MaskSelector(0.3)), (constant(1), MaskSelector(0.6))], constant(2)
    )
    labels, routes = composed.predict(x)
    assert labels.tolist() == [0, 1, 2, 0]
    assert routes.tolist() == [0, 1, 2, 0]
    assert composed.core_route == 2


def test_robustness_selector_checks_the_radius_it_is_given():
    model = random_linear(2, dim=2, seed=0)
    x = 0.25 + 0.5 * torch.rand(1000, 2, generator=torch.Generator().manual_seed(0))
    radius = exact_radius(model, x, "linf")
    eps = float(radius.median()) / 2
    selector = RobustnessSelector(model, ThreatModel("linf", eps),
                                  PGD(steps=30, relative_step=0.1, early_exit=True, seed=0),
                                  kappa=2)
    selected = selector.select(x)
    assert selected[radius > 2.4 * eps].all()
    assert not selected[radius < 1.6 * eps].any()
    assert (radius < 1.6 * eps).sum() > 50
    deployed = RobustnessSelector(model, ThreatModel("linf", eps), PGD())
    assert deployed.threat.eps == eps


def test_inference_time_and_offline_composition_agree():
    branch, core = random_linear(3, 2, seed=1), random_linear(3, 2, seed=2)
    x = torch.rand(400, 2, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 3, (400,), generator=torch.Generator().manual_seed(2))
    threat = ThreatModel("linf", 0.05)
    attack = PGD(steps=20, relative_step=0.1, random_start=False, early_exit=True)
    composed = ComposedClassifier(branch, RobustnessSelector(branch, threat, attack), core)
    labels, routes = composed.predict(x)
    branch_records = evaluate_model(branch, x, y, threat, [0.05, 0.1], attack, progress=False)
    core_records = evaluate_model(core, x, y, threat, [0.05, 0.1], attack, progress=False)
    offline = compose_records(branch_records, core_records,
                              Selection.robustness(branch_records, 0.05))
    assert labels.tolist() == offline.predictions.tolist()
    assert (routes == 0).tolist() == branch_records.robust_at(0.05).tolist()
    assert 0 < int((routes == 0).sum()) < len(x)


def test_class_count_mismatch_is_a_clear_error():
    selector = MaskSelector(0.5)
    with pytest.raises(ValueError, match="number of classes"):
        ComposedClassifier(MLP(2, 3), selector, MLP(2, 2))
    plain = ComposedClassifier(torch.nn.Linear(2, 3), selector, torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="number of classes"):
        plain.predict(torch.rand(4, 2))


def test_bad_inputs_are_clear_errors():
    composed = ComposedClassifier(MLP(2, 3), MaskSelector(0.5), MLP(2, 3))
    with pytest.raises(ValueError, match="NaN"):
        composed.predict(torch.tensor([[0.5, float("nan")]]))
    with pytest.raises(ValueError, match="shape"):
        composed.predict(torch.rand(4, 3))
    with pytest.raises(ValueError, match="domain"):
        composed.predict(torch.tensor([[0.5, 2.0]]))


def test_selector_kappa_below_one_is_rejected():
    with pytest.raises(ValueError, match="kappa"):
        RobustnessSelector(MLP(), ThreatModel("linf", 0.1), PGD(), kappa=0.5)
