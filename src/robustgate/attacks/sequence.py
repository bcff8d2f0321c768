"""Attacks run one after the other, each on the inputs the ones before it left unbroken (as
AutoAttack runs its stages): an input is broken where any stage breaks it, so the sequence is at
least as strong as each of its stages, and the stages after the first cost only what the first
left standing."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustgate.attacks.pgd import Attack, run_attack
from robustgate.attacks.registry import check_attack_applies
from robustgate.inputs import check_outputs
from robustgate.models.modes import as_model_dtype
from robustgate.threat import ThreatModel


class AttackSequence:
    """``attacks`` in order; an input leaves the sequence at the first point that changes the
    model's prediction from ``target``, which is the point returned for it (else ``x`` itself).
    It takes the inputs' ``indices`` (``PerInputAttack``'s signature) and hands them to the
    stages that seed their randomness per input; a stage seeded per batch (``pyautoattack``'s)
    makes an input's answer depend on its batch, as that stage alone would."""

    seeded_per_input = True

    def __init__(self, attacks: Sequence[Attack]) -> None:
        if not attacks:
            raise ValueError("an attack sequence needs at least one attack")
        self.attacks = tuple(attacks)

    def __repr__(self) -> str:
        return " then ".join(repr(attack) for attack in self.attacks)

    def check_classes(self, num_classes: int) -> None:
        """Refuse, before anything runs, a sequence with a stage that cannot attack a model of
        ``num_classes`` classes."""
        for attack in self.attacks:
            check_attack_applies(attack, num_classes)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, threat: ThreatModel,
        indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = as_model_dtype(x, model).detach()
        target = target.to(x.device)
        indices = torch.arange(len(x)) if indices is None else indices.cpu()
        if len(indices) != len(x):
            raise ValueError(f"{len(indices)} indices for {len(x)} inputs")
        best = x.clone()
        standing = torch.arange(len(x), device=x.device)
        for attack in self.attacks:
            if len(standing) == 0:
                break
            origin, aim = x[standing], target[standing]
            x_adv = run_attack(attack, model, origin, aim, threat, indices[standing.cpu()])
            with torch.no_grad():
                logits = model(x_adv)
            check_outputs(logits, type(model).__name__)
            broken = logits.argmax(dim=1) != aim
            best[standing[broken]] = x_adv[broken].to(best.dtype)
            standing = standing[~broken]
        return best
