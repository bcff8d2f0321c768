"""The counted robust accuracy of a composition is a lower bound on the truth: held against the
exact robust accuracy of the deployed system, computed on a grid over the 2-D domain."""

import numpy as np
import pytest
import torch
from conftest import Linear, exact_radius, random_linear

from robustgate.attacks import make_attack
from robustgate.evaluate import Grid, Records, Selection, compose_records, evaluate_model
from robustgate.threat import ThreatModel

THREAT = ThreatModel("linf", 0.1)
STEP = 0.0025


def boundary_model(boundary: float, steepness: float = 20.0) -> Linear:
    """Class 1 where ``x[1] > boundary``."""
    return Linear(torch.tensor([[0.0, 0.0], [0.0, steepness]]),
                  torch.tensor([0.0, -steepness * boundary]))


def counted(branch, core, x, y, kappa):
    """The sound count from records of the parts (the default robustness check)."""
    radii = [0.1, kappa * 0.1, (kappa + 1) * 0.1] + ([(kappa - 1) * 0.1] if kappa > 1 else [])
    attack = make_attack("pgd", steps=50)
    branch_records = evaluate_model(branch, x, y, THREAT, radii, attack, progress=False)
    core_records = evaluate_model(core, x, y, THREAT, [0.1], attack, progress=False)
    sound = compose_records(branch_records, core_records,
                            Selection.robustness(branch_records, 0.1, kappa))
    return branch_records, core_records, sound.accurate & sound.robust_at(0.1)


def exact(branch, core, x, y, kappa, step=STEP):
    grid = Grid(THREAT, step)
    predictions, robust = grid.robustness(grid.composition(branch, core, kappa), x)
    return (predictions == y.numpy()) & robust


def the_old_form(branch_records: Records, core_records: Records) -> np.ndarray:
    """The form the project counted with before: an abstained input robust wherever the core is
    (``(1 − S)·robacc_C``), the route into the branch's robust-and-wrong region left out."""
    selected, stable = branch_records.robust_at(0.1), branch_records.robust_at(0.2)
    agree = branch_records.predictions == core_records.predictions
    robacc_b = branch_records.accurate & branch_records.robust_at(0.1)
    robacc_c = core_records.accurate & core_records.robust_at(0.1)
    return stable & robacc_b | selected & ~stable & robacc_c & agree | ~selected & robacc_c


def grid_points(n: int, seed: int, grid: Grid) -> torch.Tensor:
    """Points inside the square, on the grid, where the grid's answers are exact."""
    return grid.snap(0.05 + 0.9 * torch.rand(n, 2, generator=torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("kappa", [1.0, 2.0])
def test_the_count_is_below_the_exact_figure_where_the_old_form_over_counts(kappa):
    # the branch (boundary near 0.45, off the grid so that no ball ends on it) is wrong between
    # 0.45 and 0.5, and robust and wrong from 0.55 on for inputs of class 0 below 0.5: an
    # abstained input near 0.5, whose core (boundary near 0.9) is robust, can be steered to
    # where the branch answers, wrongly
    branch, core = boundary_model(0.4512), boundary_model(0.9013)
    x = grid_points(300, 0, Grid(THREAT, STEP))
    y = (x[:, 1] > 0.5).long()
    branch_records, core_records, sound = counted(branch, core, x, y, kappa)
    truth = exact(branch, core, x, y, kappa)
    assert not (sound & ~truth).any(), "the count holds an input the exact system does not"
    assert sound.sum() > 100
    if kappa == 1:
        old = the_old_form(branch_records, core_records)
        assert (old & ~truth).sum() > 5, "the case is built so that the old form over-counts"


def test_the_exact_computation_agrees_across_resolutions():
    branch, core = boundary_model(0.4512), boundary_model(0.9013)
    x = grid_points(300, 1, Grid(THREAT, 0.005))  # on both grids
    y = (x[:, 1] > 0.5).long()
    coarse, fine = exact(branch, core, x, y, 1.0, 0.005), exact(branch, core, x, y, 1.0, 0.0025)
    assert (coarse != fine).sum() <= 2


class Disk(torch.nn.Module):
    """Class 1 inside the disk of ``radius`` around ``centre``: a curved boundary."""

    def __init__(self, centre: tuple[float, float], radius: float) -> None:
        super().__init__()
        self.centre, self.radius = torch.tensor(centre), radius
        self.input_shape, self.num_classes = (2,), 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inside = 20 * (self.radius - (x - self.centre).norm(dim=1))
        return torch.stack([-inside, inside], dim=1)


@pytest.mark.parametrize("kappa", [1.0, 1.5, 2.0, 3.0])
def test_the_form_on_exact_records_is_below_the_exact_figure(kappa):
    # labels from a disk; the branch's disk is smaller and shifted (wrong on a crescent), the
    # core's larger: both routes of the adversary are open somewhere. Records from the grid
    # are exact, so this holds the form itself against the truth (an attack may miss a flip
    # where the loss has several maxima in the ball, the corners of the box here)
    branch, core = Disk((0.52, 0.5), 0.2513), Disk((0.5, 0.49), 0.3307)
    grid = Grid(THREAT, STEP)
    x = grid_points(400, 2, grid)
    y = ((x - torch.tensor([0.5, 0.5])).norm(dim=1) < 0.2809).long()
    radii = [0.1, kappa * 0.1, (kappa + 1) * 0.1] + ([(kappa - 1) * 0.1] if kappa > 1 else [])
    branch_records = grid.records(branch, x, y, radii)
    composed = compose_records(branch_records, grid.records(core, x, y, [0.1]),
                               Selection.robustness(branch_records, 0.1, kappa))
    predictions, robust = grid.robustness(grid.composition(branch, core, kappa), x)
    assert np.array_equal(composed.predictions, predictions)  # the deployed system's answers
    sound, truth = composed.accurate & composed.robust_at(0.1), (predictions == y.numpy()) & robust
    assert not (sound & ~truth).any()
    assert 0.2 < sound.mean() <= truth.mean() < 1


def test_the_grid_rejects_what_it_cannot_compute():
    with pytest.raises(ValueError, match="linf"):
        Grid(ThreatModel("l2", 0.1), 0.01)
    with pytest.raises(ValueError, match="step"):
        Grid(THREAT, 2.0)
    with pytest.raises(ValueError, match="two-dimensional"):
        Grid(THREAT, 0.1).index(torch.rand(3, 4))


def test_grid_records_match_the_exact_radius_of_a_linear_classifier():
    # Linf radius |margin| / ||w||_1 for two classes, where the ball stays inside the domain
    model = random_linear(2, dim=2, seed=3)
    grid = Grid(THREAT, STEP)
    x = grid.snap(0.3 + 0.4 * torch.rand(400, 2, generator=torch.Generator().manual_seed(5)))
    y = model(x).argmax(1)
    records = grid.records(model, x, y, [0.05, 0.1, 0.2])
    radius = exact_radius(model, x, "linf").numpy()
    for eps in (0.05, 0.1, 0.2):
        clear = np.abs(radius - eps) > 2 * STEP  # a grid point's error is within a step
        assert clear.sum() > 100
        assert np.array_equal(records.robust_at(eps)[clear], (radius > eps)[clear])


@pytest.mark.parametrize("kappa", [1.0, 2.0])
def test_the_certified_count_of_a_bound_selector_is_below_the_exact_figure(kappa):
    """An IBP-trained branch deployed behind a bound selector (IBP or CROWN, either suffices)
    with a standard core: the count (stability by IBP at (κ+1)·eps, the core's own IBP
    certificate) never exceeds the deployed composition's exact robust accuracy on the grid."""
    from robustgate.data import load_dataset
    from robustgate.evaluate import certify_with_bounds
    from robustgate.losses import make_loss
    from robustgate.models import MLP
    from robustgate.select import BoundSelector
    from robustgate.train import TrainConfig, fit

    threat, step = ThreatModel("linf", 0.05), 0.004
    train = load_dataset("threegauss", split="train", seed=0, n=600)
    torch.manual_seed(0)
    branch, core = MLP(2, 3, (16, 16)), MLP(2, 3, (16, 16))
    fit(branch, make_loss("ibp", ThreatModel("linf", 0.15), warmup_epochs=1, ramp_epochs=4),
        train.x, train.y, TrainConfig(epochs=8, batch_size=20, lr=0.03), progress=False)
    fit(core, make_loss("standard"), train.x, train.y, TrainConfig(epochs=8, batch_size=20),
        progress=False)
    grid = Grid(threat, step)
    test = load_dataset("threegauss", split="test", seed=0, n=300)
    x, y = grid.snap(test.x), test.y
    radii = [threat.eps, kappa * threat.eps, (kappa + 1) * threat.eps]
    deployed = certify_with_bounds(branch, x, y, threat, radii, "ibp+crown", progress=False)
    interval = certify_with_bounds(branch, x, y, threat, radii, "ibp", progress=False)
    core_certified = certify_with_bounds(core, x, y, threat, [threat.eps], "ibp",
                                         progress=False)
    selection = Selection.bounds(deployed.records(), interval.records(), threat.eps, kappa)
    composed = compose_records(deployed.records(), core_certified.records(), selection)
    count = composed.accurate & composed.robust_at(threat.eps)
    selector = BoundSelector(branch, threat, "ibp+crown", kappa)
    predictions, robust = grid.robustness(grid.composition(branch, core, select=selector.select), x)
    truth = (predictions == y.numpy()) & robust
    assert count.mean() > 0.5
    assert not (count & ~truth).any()
    assert (composed.predictions == predictions).all()
