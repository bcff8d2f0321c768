"""Attacks share one signature: ``attack(model, x, target, threat) -> x_adv``, moving the
prediction away from ``target``. Evaluation is separate (``check_robustness``)."""

from robustgate.attacks.autoattack import AutoAttackAdapter
from robustgate.attacks.pgd import PGD, Attack
from robustgate.attacks.records_check import RECORDS_CHECKS, records_check
from robustgate.attacks.registry import ATTACKS, build_attack, check_attack_applies, make_attack
from robustgate.attacks.robustness import check_robustness
from robustgate.attacks.sequence import AttackSequence

__all__ = ["ATTACKS", "PGD", "RECORDS_CHECKS", "Attack", "AttackSequence", "AutoAttackAdapter",
           "build_attack", "check_attack_applies", "check_robustness", "make_attack",
           "records_check"]
