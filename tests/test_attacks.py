import inspect

import pytest
import torch
from conftest import Linear, exact_radius, random_linear

from robustgate.attacks import (
    PGD,
    AttackSequence,
    AutoAttackAdapter,
    build_attack,
    check_robustness,
    make_attack,
    records_check,
)
from robustgate.config import AttackSettings
from robustgate.threat import ThreatModel

EPS = 0.1


def interior_points(n: int, dim: int, seed: int) -> torch.Tensor:
    """Points whose eps-balls (linf and l2, eps <= 0.25) lie inside [0, 1]^dim."""
    return 0.25 + 0.5 * torch.rand(n, dim, generator=torch.Generator().manual_seed(seed))


def robustness_against_exact_radius(num_classes: int, norm: str):
    model = random_linear(num_classes, dim=5, seed=num_classes)
    x = interior_points(2000, 5, seed=1)
    radius = exact_radius(model, x, norm)
    eps = min(0.25, float(radius.median()))  # balls of radius <= 0.25 stay in the domain
    attack = PGD(steps=30, relative_step=0.1, restarts=2, early_exit=True, seed=0)
    _, robust = check_robustness(model, x, ThreatModel(norm, eps), attack)
    clearly_below, clearly_above = radius < 0.8 * eps, radius > 1.2 * eps
    assert clearly_below.sum() > 50 and clearly_above.sum() > 50
    return robust, clearly_below, clearly_above


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_matches_the_exact_radius_of_a_binary_linear_classifier(norm):
    """|margin| / ||w||_dual: PGD finds a flip below it and never above it."""
    robust, clearly_below, clearly_above = robustness_against_exact_radius(2, norm)
    assert not robust[clearly_below].any(), "PGD missed an adversarial point inside the ball"
    assert robust[clearly_above].all(), "PGD claims a flip beyond the exact radius"


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_on_a_multiclass_linear_classifier_is_sound_and_nearly_complete(norm):
    """With several classes, maximizing cross-entropy is not always aimed at the nearest
    boundary, so a few flips below the radius are missed; none is ever claimed above it."""
    robust, clearly_below, clearly_above = robustness_against_exact_radius(4, norm)
    assert robust[clearly_above].all(), "PGD claims a flip beyond the exact radius"
    assert float(robust[clearly_below].float().mean()) < 0.1


def test_attack_points_stay_in_the_ball_and_flip_where_they_claim():
    model = random_linear(3, dim=4, seed=0)
    x = interior_points(300, 4, seed=2)
    threat = ThreatModel("linf", EPS)
    predicted = model(x).argmax(1)
    x_adv = PGD(steps=20, early_exit=True, seed=0)(model, x, predicted, threat)
    assert bool((threat.norm_of(x_adv - x) <= EPS + 1e-6).all())
    flipped = model(x_adv).argmax(1) != predicted
    _, robust = check_robustness(model, x, threat, PGD(steps=20, early_exit=True, seed=0))
    assert torch.equal(flipped, ~robust)


def test_early_exit_makes_the_same_decisions_as_the_full_attack():
    model = random_linear(3, dim=4, seed=3)
    x = interior_points(500, 4, seed=3)
    threat = ThreatModel("l2", EPS)
    full = PGD(steps=30, relative_step=0.1, random_start=False)
    early = PGD(steps=30, relative_step=0.1, random_start=False, early_exit=True)
    assert torch.equal(check_robustness(model, x, threat, full)[1],
                       check_robustness(model, x, threat, early)[1])


def test_kl_objective_moves_away_from_the_clean_distribution():
    model = random_linear(3, dim=4, seed=4)
    x = interior_points(200, 4, seed=4)
    threat = ThreatModel("linf", EPS)
    x_adv = PGD(steps=10, objective="kl", seed=0)(model, x, model(x).argmax(1), threat)
    with torch.no_grad():
        clean = torch.log_softmax(model(x), 1)
        kl = (clean.exp() * (clean - torch.log_softmax(model(x_adv), 1))).sum(1)
    assert bool((threat.norm_of(x_adv - x) <= EPS + 1e-6).all())
    assert float(kl.mean()) > 1e-3


def test_zero_eps_is_robust_everywhere():
    model = random_linear(3, dim=4, seed=5)
    x = interior_points(50, 4, seed=5)
    _, robust = check_robustness(model, x, ThreatModel("linf", 0.0), PGD(seed=0))
    assert robust.all()


def test_attack_rejects_nan_and_wrong_shape():
    model = random_linear(3, dim=4, seed=0)
    threat = ThreatModel("linf", EPS)
    bad = torch.full((2, 4), 0.5)
    bad[1, 2] = torch.nan
    with pytest.raises(ValueError, match="NaN"):
        PGD()(model, bad, torch.zeros(2, dtype=torch.int64), threat)
    with pytest.raises(ValueError, match="shape"):
        PGD()(model, torch.full((2, 3), 0.5), torch.zeros(2, dtype=torch.int64), threat)
    with pytest.raises(ValueError, match="domain"):
        PGD()(model, torch.full((2, 4), 1.5), torch.zeros(2, dtype=torch.int64), threat)


def test_a_point_outside_the_ball_is_reported():
    model = Linear(torch.eye(2), torch.zeros(2))

    def cheating_attack(model, x, target, threat):
        return threat.clamp(x + 0.5)

    with pytest.raises(RuntimeError, match="distance"):
        check_robustness(model, torch.full((3, 2), 0.2), ThreatModel("linf", EPS),
                         cheating_attack)


@pytest.mark.parametrize("arguments", [{"steps": -1}, {"restarts": 0},
                                       {"relative_step": 0.0}, {"objective": "dlr"}])
def test_invalid_pgd_settings_are_errors(arguments):
    with pytest.raises(ValueError):
        PGD(**arguments)


@pytest.mark.parametrize("name", ["apgd-ce", "autoattack"])
@pytest.mark.parametrize("low, high", [(0.0, 1.0), (-1.0, 1.0)])
def test_pyautoattack_matches_the_exact_radius_of_a_binary_linear_classifier(name, low, high):
    """Also on a domain other than pyautoattack's [0, 1] (the problem stretched onto it): the
    adapter attacks its rescaled view and answers in the inputs' own space, inside the ball."""
    unit = random_linear(2, dim=5, seed=2)
    width = high - low
    weight, bias = unit.linear.weight.detach(), unit.linear.bias.detach()
    model = Linear(weight / width, bias - weight.sum(1) * low / width)  # unit((x - low) / width)
    x = low + width * interior_points(300, 5, seed=1)
    radius = exact_radius(model, x, "linf")
    eps = min(0.25 * width, float(radius.median()))
    threat = ThreatModel("linf", eps, low, high)
    attack = make_attack(name, steps=50)
    _, robust = check_robustness(model, x, threat, attack)
    assert not robust[radius < 0.8 * eps].any()
    assert robust[radius > 1.2 * eps].all()
    x_adv = attack(model, x, model(x).argmax(1), threat)
    assert (x_adv - x).abs().max() <= eps + 1e-6 and x_adv.min() >= low and x_adv.max() <= high


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_autoattack_attacks_a_rescaled_view_of_another_domain(norm, monkeypatch):
    """pyautoattack attacks images in [0, 1]: on the domain [-1, 3] it is given the inputs' view
    in [0, 1] and eps / 4 (in either norm), and the answer is in the inputs' own ball."""
    import pyautoattack

    seen = {}

    class Recording(pyautoattack.AutoAttack):
        def __init__(self, model, **options):
            seen.update(options)
            super().__init__(model, **options)

        def run_standard_evaluation(self, x, y, **options):
            seen["view"] = x.clone()
            return super().run_standard_evaluation(x, y, **options)

    monkeypatch.setattr(pyautoattack, "AutoAttack", Recording)
    model = random_linear(3, dim=5, seed=1)
    x = -1 + 4 * interior_points(20, 5, seed=0)
    threat = ThreatModel(norm, 0.4, -1.0, 3.0)
    x_adv = AutoAttackAdapter(["apgd-ce"], iterations=5)(model, x, model(x).argmax(1), threat)
    assert seen["eps"] == pytest.approx(0.1)
    assert torch.allclose(seen["view"].reshape(x.shape), (x + 1) / 4)
    assert (threat.norm_of(x_adv - x) <= 0.4 + 1e-5).all()
    assert x_adv.min() >= -1 and x_adv.max() <= 3


def test_targeted_apgd_finds_the_nearest_boundary_of_a_multiclass_linear_classifier():
    model = random_linear(4, dim=5, seed=4)
    x = interior_points(500, 5, seed=1)
    radius = exact_radius(model, x, "linf")
    eps = min(0.25, float(radius.median()))
    attack = make_attack("apgd-t", steps=50)
    _, robust = check_robustness(model, x, ThreatModel("linf", eps), attack)
    assert not robust[radius < 0.8 * eps].any()
    assert robust[radius > 1.2 * eps].all()


def test_unknown_attacks_are_errors():
    with pytest.raises(ValueError, match="unknown attack 'cw'"):
        make_attack("cw")
    with pytest.raises(ValueError, match="unknown pyautoattack attacks"):
        AutoAttackAdapter(["deepfool"])


def test_a_seeded_attack_gives_the_same_answer_on_every_call():
    model = random_linear(3, 2, seed=4)
    x = torch.rand(64, 2, generator=torch.Generator().manual_seed(4))
    attack = PGD(steps=3, relative_step=0.1, restarts=2, seed=7)
    threat = ThreatModel("linf", 0.05)
    target = model(x).argmax(1)
    first = attack(model, x, target, threat)
    assert torch.equal(first, attack(model, x, target, threat))
    assert not torch.equal(first, PGD(steps=3, relative_step=0.1, restarts=2, seed=8)(
        model, x, target, threat))


def saturated_linear(num_classes: int, dim: int, seed: int, scale: float) -> Linear:
    """A random linear classifier with its logits multiplied by ``scale``: the same regions, but
    softmax saturates, so cross-entropy's gradient vanishes on confident inputs."""
    model = random_linear(num_classes, dim, seed)
    return Linear(scale * model.linear.weight.detach(), scale * model.linear.bias.detach())


@pytest.mark.parametrize("scale", [1.0, 1000.0])
def test_the_margin_check_matches_the_exact_radius_of_a_multiclass_linear_classifier(scale):
    # five classes: the exact linf radius is min_j (f_ŷ − f_j) / ||w_ŷ − w_j||_1 while the ball
    # stays in the domain; the targeted margin towards every other class finds each flip below
    # it, with saturated logits too, and never claims one above it
    model = saturated_linear(5, dim=5, seed=5, scale=scale)
    x = interior_points(2000, 5, seed=4)
    radius = exact_radius(model, x, "linf")
    eps = min(0.25, float(radius.median()))
    threat = ThreatModel("linf", eps)
    clearly_below, clearly_above = radius < 0.9 * eps, radius > 1.1 * eps
    assert clearly_below.sum() > 200 and clearly_above.sum() > 200
    attack = make_attack("pgd", steps=50, target_classes=4)
    _, robust = check_robustness(model, x, threat, attack)
    assert not robust[clearly_below].any() and robust[clearly_above].all()
    # the default (the 3 likeliest other classes) misses almost nothing either
    _, default = check_robustness(model, x, threat, make_attack("pgd", steps=50))
    assert float(default[clearly_below].float().mean()) < 0.02
    if scale > 1:
        # what the margin objective is for: cross-entropy PGD is blind where softmax saturates
        cross_entropy = make_attack("pgd", steps=50, objective="ce", target_classes=0)
        _, blind = check_robustness(model, x, threat, cross_entropy)
        assert float(blind[clearly_below].float().mean()) > 0.3


def test_targeted_runs_need_logits():
    with pytest.raises(ValueError, match="target_classes"):
        PGD(objective=lambda outputs, target: outputs.sum(1), target_classes=2)
    with pytest.raises(ValueError, match="target_classes"):
        PGD(target_classes=-1)


def _defaults(callable_) -> dict:
    return {name: parameter.default
            for name, parameter in inspect.signature(callable_).parameters.items()}


def test_each_attack_parameter_has_one_default_wherever_it_is_set():
    from robustgate.config import EVALUATION_ATTACK, AdaptiveSettings, AttackSettings
    from robustgate.evaluate import AdaptiveAttack
    from robustgate.losses.objectives import training_attack

    training = AttackSettings()
    pgd, trained = _defaults(PGD), training_attack("ce")
    assert (pgd["steps"], pgd["relative_step"], pgd["restarts"]) == (
        training.steps, training.relative_step, training.restarts) == (
        trained.steps, trained.relative_step, trained.restarts)
    evaluation = make_attack("pgd")
    assert (evaluation.steps, evaluation.relative_step, evaluation.restarts,
            evaluation.objective, evaluation.target_classes) == (
        EVALUATION_ATTACK.steps, EVALUATION_ATTACK.relative_step, EVALUATION_ATTACK.restarts,
        EVALUATION_ATTACK.objective, EVALUATION_ATTACK.target_classes)
    from robustgate.cli import build_parser
    from robustgate.config import EvaluationSettings

    assert EvaluationSettings().attack == EVALUATION_ATTACK
    command = build_parser().parse_args(["evaluate", "model.safetensors", "--data", "twogauss",
                                         "--eps", "0.1",
                                         "--out", "out"])
    assert (command.attack, command.steps, command.restarts, command.relative_step,
            command.target_classes) == (EVALUATION_ATTACK.name, EVALUATION_ATTACK.steps,
                                        EVALUATION_ATTACK.restarts,
                                        EVALUATION_ATTACK.relative_step,
                                        EVALUATION_ATTACK.target_classes)
    adaptive = _defaults(AdaptiveAttack)
    for name, value in AdaptiveSettings().attack_options().items():
        assert adaptive[name] == (tuple(value) if isinstance(value, list) else value), name


def test_the_records_check_is_raised_to_the_strong_rule_by_default():
    cheaper = AttackSettings(name="pgd", steps=10, relative_step=0.1, objective="ce",
                             target_classes=2)
    strong = records_check(cheaper, "strong", 10, seed=0)
    assert isinstance(strong, AttackSequence)
    pgd, apgd = strong.attacks
    # margin PGD, 2 restarts, enough steps to cross the ball; the targeted runs are APGD-T's
    assert (pgd.objective, pgd.restarts, pgd.target_classes, pgd.steps) == ("margin", 2, 0, 20)
    assert apgd.attacks == ("apgd-ce", "apgd-t") and (apgd.iterations, apgd.restarts) == (100, 1)
    # three classes: APGD-T's loss is undefined, the PGD aims at every other class itself
    pgd, apgd = records_check(cheaper, "strong", 3, seed=0).attacks
    assert pgd.target_classes == 2 and apgd.attacks == ("apgd-ce",)
    assert repr(records_check(cheaper, "attack", 10, seed=0)) == repr(
        build_attack(cheaper, seed=0))  # the cheaper check, kept
    assert records_check(AttackSettings(name="apgd-ce"), "strong", 10, seed=0).attacks is None
    assert records_check(AttackSettings(name="autoattack"), "strong", 10, seed=0).attacks is None
    with pytest.raises(ValueError, match="unknown records check 'weak'"):
        records_check(cheaper, "weak", 10, seed=0)


class _Shift:
    """A fake attack that moves the inputs ``where`` by ``by`` along the first feature."""

    def __init__(self, where: list[int], by: float) -> None:
        self.where, self.by, self.seen = where, by, []

    def __call__(self, model, x, target, threat):
        self.seen.append(len(x))
        moved = x.clone()
        for position in self.where:
            if position < len(x):
                moved[position, 0] += self.by
        return moved


def test_an_attack_sequence_keeps_every_stage_s_flips_and_attacks_only_what_stands():
    """A two-class model that flips where the first feature passes 0.5: the first stage breaks
    input 0, the second the first two of what stands (inputs 1 and 2); every other input holds
    and comes back unmoved."""
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
        model.bias.copy_(torch.tensor([0.5, -0.5]))
    x = torch.full((5, 2), 0.45)
    first, second = _Shift([0], 0.1), _Shift([0, 1], 0.1)
    threat = ThreatModel("linf", 0.1)
    predicted, robust = check_robustness(model, x, threat, AttackSequence([first, second]))
    assert predicted.tolist() == [0] * 5
    assert robust.tolist() == [False, False, False, True, True]
    assert (first.seen, second.seen) == ([5], [4])
    assert torch.equal(AttackSequence([first, second])(model, x, predicted, threat)[3:], x[3:])
    with pytest.raises(ValueError, match="at least one attack"):
        AttackSequence([])


def test_the_strong_check_finds_the_flips_towards_an_unlikely_class_the_cheaper_one_misses():
    """Class 3 is the least likely at x yet the only one reachable in the ball, along a direction
    that every likelier class's gradient points away from: the margin run led by the runner-up
    and the targeted runs towards the 2 likeliest classes miss it; the strong check's targeted
    stage (APGD-T towards every other class) finds it on every input."""
    model = torch.nn.Linear(2, 4)
    weight = torch.tensor([[0.0, 0.0], [-1.0, 1.0], [-0.9, 0.9], [25.0, -25.0]])
    with torch.no_grad():
        model.weight.copy_(weight)
        model.bias.copy_(torch.tensor([0.0, -0.5, -0.6, -2.0]) - weight @ torch.tensor([0.5, 0.5]))
    x = torch.full((200, 2), 0.5)
    threat = ThreatModel("linf", 0.1)
    cheaper = AttackSettings(name="pgd", steps=50, relative_step=0.1, target_classes=2)
    _, weak = check_robustness(model, x, threat, build_attack(cheaper, seed=0))
    _, strong = check_robustness(model, x, threat, records_check(cheaper, "strong", 4, seed=0))
    assert not strong.any()
    assert weak.float().mean() > 0.3
