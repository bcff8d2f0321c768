"""The robustness selector's cascade: certificate stages, then the attack on what is left. It
decides like the attack alone (a certificate leaves the attack nothing to find), its stages are
chosen by measured cost, and as a form of the robustness kind it runs through an experiment."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_pipeline import small_demo
from torch import nn

from robustgate.attacks import PGD, check_robustness
from robustgate.attacks.robustness import BALL_TOLERANCE
from robustgate.config import CompositionSettings, parse_config
from robustgate.data import make_synthetic
from robustgate.losses import make_loss
from robustgate.models import MLP
from robustgate.pipeline import run_experiment
from robustgate.select import CASCADE_STAGES, Cascade, RobustnessSelector, choose_stages
from robustgate.select.cascade import MARGIN_TOLERANCE, certified_by, cheapest_cascade
from robustgate.threat import ThreatModel
from robustgate.train import TrainConfig, fit
from tests.conftest import exact_radius, random_linear, without_decision_regions

# PGD without a random start: its answer on an input does not depend on the batch it is in, so
# the cascade and the attack alone must agree exactly
ATTACK = PGD(steps=20, relative_step=0.1, random_start=False, objective="margin",
             target_classes=2)


@pytest.fixture(scope="module")
def trained():
    x, y, classes = make_synthetic("threegauss", 600, seed=0)
    torch.manual_seed(0)
    model = MLP(2, classes, (32, 32))
    fit(model, make_loss("standard"), x, y, TrainConfig(epochs=3), progress=False)
    test, _, _ = make_synthetic("threegauss", 400, seed=0, split="test")
    return model.eval(), test


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 1000), eps=st.sampled_from([0.02, 0.05, 0.1, 0.2]),
       norm=st.sampled_from(["linf", "l2"]))
def test_the_cascade_decides_like_the_attack_alone(seed, eps, norm):
    torch.manual_seed(seed)
    model = MLP(2, 3, (16, 16)).eval()
    x = torch.rand(64, 2)
    threat = ThreatModel(norm, eps)
    alone = check_robustness(model, x, threat, ATTACK)
    cascade = Cascade(ATTACK)
    cascaded = check_robustness(model, x, threat, cascade)
    assert torch.equal(alone[0], cascaded[0]) and torch.equal(alone[1], cascaded[1])
    assert sum(cascade.decided.values()) == len(x)


def test_the_cascade_certifies_most_inputs_of_a_trained_model_and_attacks_the_rest(trained):
    model, x = trained
    threat = ThreatModel("linf", 0.1)
    cascade = Cascade(ATTACK, ["crown", "ibp"])
    assert cascade.stages == ("ibp", "crown")  # cheapest first, whatever the order given
    robust = check_robustness(model, x, threat, cascade)[1]
    assert torch.equal(robust, check_robustness(model, x, threat, ATTACK)[1])
    assert cascade.decided["ibp"] > len(x) / 2
    assert cascade.decided["attack"] >= int((~robust).sum())
    selector = RobustnessSelector(model, threat, Cascade(ATTACK, ["ibp"]))
    assert torch.equal(selector.select(x), robust)



def test_an_attack_seeded_per_input_gets_each_inputs_own_index_and_decides_alike(trained):
    model, x = trained
    threat = ThreatModel("linf", 0.15)
    attack = PGD(steps=5, relative_step=0.1, restarts=2, seed=3, objective="margin")
    indices = torch.arange(1000, 1000 + len(x))
    alone = check_robustness(model, x, threat, attack, indices=indices)[1]
    cascade = Cascade(attack, ["ibp"])
    assert torch.equal(check_robustness(model, x, threat, cascade, indices=indices)[1], alone)
    assert torch.equal(check_robustness(model, x, threat, cascade)[1],
                       check_robustness(model, x, threat, attack)[1])
    assert 0 < cascade.decided["ibp"] < 2 * len(x)


def test_a_certificate_covers_the_attacks_ball_tolerance_and_a_margin_above_float_error():
    model = nn.Sequential(random_linear(3, dim=4, seed=2).linear)
    x = 0.3 + 0.4 * torch.rand(2000, 4, generator=torch.Generator().manual_seed(3))
    predicted = model(x).argmax(1)
    radius = exact_radius(random_linear(3, dim=4, seed=2), x, "linf")
    eps = float(radius.median())
    certified = certified_by(model, x, predicted, ThreatModel("linf", eps), "ibp")
    # exact for a linear model: certified exactly beyond eps + the ball tolerance, by a margin
    beyond = radius > eps + BALL_TOLERANCE
    assert not (certified & ~beyond).any()
    weights = model[0].weight.detach()
    dual = (weights.unsqueeze(0) - weights.unsqueeze(1)).abs().sum(2).max()
    clear = radius > eps + BALL_TOLERANCE + 2 * MARGIN_TOLERANCE / dual
    assert certified[clear].all()


def test_the_cheapest_cascade_weighs_each_stage_against_the_attack_it_saves():
    # 4 inputs: IBP certifies the first two, CROWN the first three; the attack costs 1 s on
    # each certified pattern's inputs and 0.1 s on the uncertified one
    certified = {"ibp": torch.tensor([True, True, False, False]),
                 "crown": torch.tensor([True, True, True, False])}
    attack_on = {(True, True): 2.0, (False, True): 1.0, (False, False): 0.1}
    stages, estimated = cheapest_cascade({"ibp": 0.01, "crown": 0.2}, certified, attack_on)
    assert estimated == pytest.approx({"attack": 3.1, "crown": 0.9, "ibp": 1.14,
                                       "ibp+crown": 0.54})
    assert stages == ("ibp", "crown")
    # a stage dearer than what it saves is left out; nothing pays: the attack alone
    assert cheapest_cascade({"ibp": 0.01, "crown": 2.0}, certified, attack_on)[0] == ("ibp",)
    assert cheapest_cascade({"ibp": 2.0}, {"ibp": certified["ibp"]},
                            {(True,): 2.0, (False,): 1.1})[0] == ()


def test_stages_are_chosen_by_measurement_and_none_where_no_bound_applies(trained):
    model, x = trained
    threat = ThreatModel("linf", 0.1)
    choice = choose_stages(model, x[:200], threat, ATTACK)
    estimated = choice.estimated_seconds
    assert set(choice.stages) <= set(CASCADE_STAGES)
    assert estimated["+".join(choice.stages) or "attack"] == min(estimated.values())
    assert choice.certified["ibp"] > 100  # timed in full: IBP costs less than the attack

    class Wrapped(nn.Module):  # an operation (GELU) that no bound rule covers
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(nn.functional.gelu(x))

    choice = choose_stages(Wrapped().eval(), x[:50], threat, ATTACK)
    assert choice.stages == () and set(choice.stage_seconds.values()) == {None}
    with pytest.raises(ValueError, match="cascade stages"):
        Cascade(ATTACK, ["ibp", "smoothing"])


def test_the_cascade_form_runs_through_an_experiment_and_reports_its_stages(tmp_path):
    config = small_demo(compositions=[{"branch": "era", "core": "standard"},
                                      {"branch": "era", "core": "standard", "cascade": True}])
    values = config.model_dump()
    values["data"]["validation_size"] = 60
    config = parse_config(values, type(config))
    label = "era→standard [cascade]"
    assert [c.label for c in config.compositions][1] == label
    result = run_experiment(config, without_decision_regions(tmp_path), device="cpu",
                            progress=False).test
    cascade = result[label].extras["cascade"]["era"]
    assert sum(cascade["decided"].values()) == 100
    plain = result["era→standard"]
    assert abs(result[label].selection_rate - plain.selection_rate) <= (
        cascade["differing_decisions"] / 100)
    assert (tmp_path / "records" / "cascade").is_dir()
    assert json.loads((tmp_path / "metrics.json").read_text())["test"][label]["cascade"]
    report = (tmp_path / "report.md").read_text()
    section = report[report.index("## The robustness selector as a cascade"):]
    row = next(line for line in section.splitlines() if line.startswith(f"| {label} | era |"))
    assert f"attack {cascade['decided']['attack']}" in row
    assert " → ".join([*cascade["choice"]["stages"], "attack"]) in row
    with pytest.raises(ValueError, match="cascade is the robustness selector's"):
        CompositionSettings(branch="a", core="b", selector="bounds", cascade=True)
    with pytest.raises(ValueError, match="sequential is the smoothing selector's"):
        CompositionSettings(branch="a", core="b", sequential=True)
