import pytest
import torch
import torch.nn.functional as F
from conftest import random_linear

from robustgate.losses import (
    ERA,
    TRADES,
    kl_averaged_over_classes,
    make_loss,
    runner_up,
    trades_term,
)
from robustgate.models import MLP
from robustgate.threat import ThreatModel

THREAT = ThreatModel("linf", 0.1)


def fixed_attack(offset: float):
    """An 'attack' that returns x moved by a fixed offset, so losses can be checked by hand."""
    def attack(model, x, target, threat):
        return threat.project(x + offset, x)
    return attack


def test_kl_is_averaged_over_classes():
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    logits_adv = torch.tensor([[0.0, 1.0, 0.0]])
    p, q = logits.softmax(1), logits_adv.softmax(1)
    expected = (p * (p.log() - q.log())).sum() / 3
    assert torch.allclose(kl_averaged_over_classes(logits, logits_adv), expected.view(1))
    assert torch.allclose(kl_averaged_over_classes(logits, logits), torch.zeros(1), atol=1e-7)


def test_trades_term_is_ce_plus_weighted_kl():
    logits, logits_adv = torch.randn(5, 3), torch.randn(5, 3)
    y = torch.tensor([0, 1, 2, 0, 1])
    expected = F.cross_entropy(logits, y, reduction="none") + 6 * kl_averaged_over_classes(
        logits, logits_adv)
    assert torch.allclose(trades_term(logits, logits_adv, y, 6.0), expected)


def test_runner_up_is_the_best_other_class():
    logits = torch.tensor([[3.0, 2.0, 1.0], [3.0, 2.0, 1.0], [0.0, 5.0, 4.0]])
    assert runner_up(logits, torch.tensor([0, 1, 1])).tolist() == [1, 0, 2]


def test_era_hard_weight_on_accurate_samples_is_beta_times_trades():
    model = random_linear(3, dim=2, seed=0)
    x = torch.rand(20, 2, generator=torch.Generator().manual_seed(0))
    y = model(x).argmax(1)  # every sample accurate
    era = ERA(THREAT, beta=0.2, weight="hard", attack=fixed_attack(0.05))
    logits, logits_adv = model(x), model(THREAT.project(x + 0.05, x))
    assert torch.allclose(era(model, x, y), 0.2 * trades_term(logits, logits_adv, y, 6.0))


def test_era_pushes_inaccurate_samples_towards_the_runner_up():
    model = random_linear(3, dim=2, seed=1)
    x = torch.rand(20, 2, generator=torch.Generator().manual_seed(1))
    predicted = model(x).argmax(1)
    y = (predicted + 1) % 3  # every sample inaccurate
    era = ERA(THREAT, beta=0.0, weight="hard", attack=fixed_attack(-0.05))
    logits_adv = model(THREAT.project(x - 0.05, x))
    expected = F.cross_entropy(logits_adv, runner_up(logits_adv, predicted), reduction="none")
    assert torch.allclose(era(model, x, y), expected)


def test_era_soft_weight_is_one_minus_p_y_and_carries_gradient():
    model = random_linear(3, dim=2, seed=2)
    x = torch.rand(8, 2, generator=torch.Generator().manual_seed(2))
    y = torch.randint(0, 3, (8,), generator=torch.Generator().manual_seed(3))
    soft = ERA(THREAT, beta=0.0, attack=fixed_attack(0.05))
    logits, logits_adv = model(x), model(THREAT.project(x + 0.05, x))
    predicted = logits.argmax(1)
    weight = 1 - logits.softmax(1).gather(1, y.view(-1, 1)).squeeze(1)
    expected = weight * F.cross_entropy(logits_adv, runner_up(logits_adv, predicted),
                                        reduction="none")
    loss = soft(model, x, y)
    assert torch.allclose(loss, expected)
    loss.sum().backward()
    assert model.linear.weight.grad is not None and model.linear.weight.grad.abs().sum() > 0


def test_losses_restore_the_training_mode():
    model = MLP(2, 3, (8,)).train()
    x = torch.rand(4, 2)
    y = torch.tensor([0, 1, 2, 0])
    for name in ("pgd_at", "trades", "era"):
        make_loss(name, THREAT)(model, x, y)
        assert model.training


def test_trades_attack_maximizes_the_kl_term():
    model = random_linear(3, dim=2, seed=4)
    x = 0.3 + 0.4 * torch.rand(50, 2, generator=torch.Generator().manual_seed(4))
    y = model(x).argmax(1)
    with torch.no_grad():
        no_attack = TRADES(THREAT, attack=fixed_attack(0.0))(model, x, y)
        attacked = TRADES(THREAT)(model, x, y)
    assert float(attacked.mean()) > float(no_attack.mean())


def test_registry_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown loss 'madry'"):
        make_loss("madry", THREAT)
    with pytest.raises(ValueError, match="needs a threat model"):
        make_loss("era")
    with pytest.raises(ValueError, match="bad parameters"):
        make_loss("era", THREAT, gamma=3)
    with pytest.raises(ValueError, match="weight"):
        make_loss("era", THREAT, weight="medium")


def test_gambler_and_confidence_terms_by_hand():
    model = random_linear(3, dim=2, seed=5)
    x = torch.rand(10, 2, generator=torch.Generator().manual_seed(5))
    y = torch.randint(0, 3, (10,), generator=torch.Generator().manual_seed(6))
    logits, logits_adv = model(x), model(THREAT.project(x + 0.05, x))
    target = runner_up(logits_adv, logits.argmax(1))
    extended = torch.cat([logits, logits_adv.gather(1, target.view(-1, 1))], 1).softmax(1)
    q_y, q_abstain = extended.gather(1, y.view(-1, 1)).squeeze(1), extended[:, -1]
    gambler = make_loss("era_gambler", THREAT, beta=0.0, payoff=2.0, attack=fixed_attack(0.05))
    assert torch.allclose(gambler(model, x, y), -torch.log(2.0 * q_y + q_abstain))
    p = logits.softmax(1)
    kl_uniform = (torch.full_like(p, 1 / 3) * (torch.log(torch.tensor(1 / 3)) - p.log())).mean(1)
    weight = 1 - p.gather(1, y.view(-1, 1)).squeeze(1) + q_abstain
    confidence = make_loss("era_conf", THREAT, beta=0.0, attack=fixed_attack(0.05))
    assert torch.allclose(confidence(model, x, y), weight * kl_uniform, atol=1e-6)
