"""Attacks for evaluation by name: ``make_attack(name, **params)``, or from a config's
``AttackSettings`` (``build_attack``)."""

from __future__ import annotations

from typing import Any

from robustgate.attacks.autoattack import AutoAttackAdapter
from robustgate.attacks.pgd import PGD, Attack
from robustgate.config import EVALUATION_ATTACK, AttackSettings

ATTACKS = ("pgd", "apgd-ce", "apgd-t", "square", "autoattack")


def make_attack(
    name: str, steps: int = EVALUATION_ATTACK.steps, restarts: int = EVALUATION_ATTACK.restarts,
    seed: int = 0, **params: Any
) -> Attack:
    """An evaluation attack: ``pgd`` (robustgate's, with early exit; by default
    ``config.EVALUATION_ATTACK``'s: the margin objective, then the targeted margin towards the
    ``target_classes`` = 3 most likely other classes), ``apgd-ce`` and ``apgd-t`` (``steps``
    iterations, ``restarts``), ``square`` (gradient-free, ``steps`` queries), or
    ``autoattack`` (the standard ensemble)."""
    if name == "pgd":
        params = {"relative_step": EVALUATION_ATTACK.relative_step,
                  "objective": EVALUATION_ATTACK.objective,
                  "target_classes": EVALUATION_ATTACK.target_classes, **params}
        return PGD(steps=steps, restarts=restarts, early_exit=True, seed=seed, **params)
    if params:
        raise ValueError(f"attack {name!r} takes no parameters {sorted(params)}")
    if name in ("apgd-ce", "apgd-t", "square"):
        return AutoAttackAdapter([name], iterations=steps, restarts=restarts, seed=seed)
    if name == "autoattack":
        return AutoAttackAdapter(None, seed=seed)
    raise ValueError(f"unknown attack {name!r}; choose from {ATTACKS}")


def build_attack(settings: AttackSettings, seed: int) -> Attack:
    """The evaluation attack that ``settings`` (``config.AttackSettings``) describe."""
    extra = ({"relative_step": settings.relative_step, "objective": settings.objective,
              "target_classes": settings.target_classes} if settings.name == "pgd" else {})
    return make_attack(settings.name, steps=settings.steps, restarts=settings.restarts,
                       seed=seed, **extra)


def check_attack_applies(attack: Attack, num_classes: int) -> None:
    """Refuse, before anything runs, an attack that cannot attack a model of ``num_classes``
    classes (``apgd-t`` on two classes); robustgate's PGD and the standard AutoAttack work on
    any number."""
    check_classes = getattr(attack, "check_classes", None)
    if check_classes is not None:
        check_classes(num_classes)
