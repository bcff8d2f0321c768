"""Adaptive evaluation of a composed classifier (DESIGN.md section 5): attack the whole system.

For every input the attack searches ``B(x, eps)`` for a point ``x'`` where the composed prediction
differs from the clean one, along each route an adversary can take:

- into the core's errors while every selector abstains: maximize the core's logit margin
  ``m(core(x'), ŷ) = max_{j≠ŷ} f_j − f_ŷ`` (the core alone), and
  ``min(m(core(x'), ŷ), saturation) − steer · score``: once the core is fooled, only lowering
  the selectors' scores (pulling the branch to its boundary) pays;
- into branch ``i``'s errors while its selector selects (and the selectors before it abstain):
  maximize ``min(m(branch_i(x'), ŷ), saturation)``, and — for each of the ``target_classes``
  most likely wrong classes ``t`` — raise the branch's confidence in ``t``, ``log p_t(x')``.
  Confidence raising is what breaks confidence selectors (a confident wrong answer is selected)
  and what steers an abstained input into a region where the branch is robust and wrong; every
  branch objective adds ``+ steer · score_i``. Every route is tried with each weight ``steer`` of
  ``steers``.

Each candidate point is judged by the composition itself (``ComposedClassifier.predict``, the
selector's real decision, e.g. a robustness check around ``x'``); the first that changes the
prediction is kept. The result is an upper bound on the composition's robustness, reported beside
the count of DESIGN.md section 1 (a lower bound).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack

import torch
import torch.nn.functional as F
from torch import nn

from robustgate.attacks import PGD
from robustgate.attacks.pgd import logit_margin_from
from robustgate.compose import ComposedClassifier
from robustgate.models.modes import eval_mode, model_device
from robustgate.threat import ThreatModel


class _Outputs(nn.Module):
    """Everything the objectives need in one forward pass: the core's logits, then per stage the
    branch's logits and the selector's score (one column)."""

    def __init__(self, composed: ComposedClassifier) -> None:
        super().__init__()
        self.composed = composed
        self.core = composed.core
        self.branches = nn.ModuleList(branch for branch, _ in composed.stages)
        self.input_shape = getattr(composed.core, "input_shape", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [self.core(x)]
        for branch, selector in self.composed.stages:
            parts += [branch(x), selector.score(x).to(x.dtype).unsqueeze(1)]
        return torch.cat(parts, dim=1)


Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _objectives(stages: int, classes: int, steers: Sequence[float], target_classes: int,
                saturation: float) -> list[tuple[str, int | None, int, Objective]]:
    """``(name, stage whose wrong classes are targets or None, rank of the target, objective)``,
    for the core alone and then for every weight of the selectors' scores in ``steers``."""

    def split(outputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        core, rest = outputs[:, :classes], outputs[:, classes:]
        logits = [rest[:, i * (classes + 1) : i * (classes + 1) + classes] for i in range(stages)]
        scores = [rest[:, i * (classes + 1) + classes] for i in range(stages)]
        return core, logits, scores

    def abstain(scores: list[torch.Tensor], upto: int) -> torch.Tensor:
        return sum((scores[j] for j in range(upto)), torch.zeros_like(scores[0]))

    def fooling(logits: torch.Tensor, target: torch.Tensor, capped: bool) -> torch.Tensor:
        margin = logit_margin_from(logits, target)
        return margin.clamp(max=saturation) if capped else margin

    def core_route(weight: float) -> Objective:
        def objective(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            core, _, scores = split(outputs)
            return fooling(core, target, weight > 0) - weight * abstain(scores, stages)
        return objective

    def branch_route(stage: int, targeted: bool, weight: float) -> Objective:
        def objective(outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            _, logits, scores = split(outputs)
            if targeted:
                gain = F.log_softmax(logits[stage], dim=1).gather(1, target.view(-1, 1))[:, 0]
            else:
                gain = fooling(logits[stage], target, weight > 0)
            return gain + weight * (scores[stage] - abstain(scores, stage))
        return objective

    plans: list[tuple[str, int | None, int, Objective]] = [("core", None, 0, core_route(0.0))]
    for weight in steers:
        steer = f"steer {weight:g}"
        if weight > 0:
            plans.append((f"core, selectors abstain ({steer})", None, 0, core_route(weight)))
        for stage in range(stages):
            plans.append((f"branch {stage} ({steer})", None, 0,
                          branch_route(stage, targeted=False, weight=weight)))
            plans += [(f"branch {stage} towards its rank-{rank + 2} class ({steer})", stage, rank,
                       branch_route(stage, targeted=True, weight=weight))
                      for rank in range(target_classes)]
    return plans


class AdaptiveAttack:
    """Attacks a :class:`ComposedClassifier` along every route (module docstring).

    Parameters
    ----------
    steps, relative_step, restarts: of the PGD run for each candidate.
    target_classes: wrong classes, per branch, towards which its confidence is raised.
    steers: weights of the selectors' scores in the objectives; every route is tried with each
        (the core alone, without the selectors, always comes first).
    saturation: cap of the logit-margin terms that the selectors' scores are added to.
    seed: seed of the random starts.

    ``candidate_counts`` accumulates, over calls, how many inputs each candidate broke first.
    """

    def __init__(self, steps: int = 50, relative_step: float = 0.1, restarts: int = 2,
                 target_classes: int = 2, steers: Sequence[float] = (1.0, 10.0),
                 saturation: float = 4.0, seed: int = 0) -> None:
        steers = tuple(float(weight) for weight in steers)
        if target_classes < 0 or not steers or min(steers) < 0 or not saturation > 0:
            raise ValueError(f"need target_classes >= 0, at least one steer, every steer >= 0 "
                             f"and saturation > 0, got {target_classes=}, {steers=}, "
                             f"{saturation=}")
        self.saturation = saturation
        self.pgd = PGD(steps=steps, relative_step=relative_step, restarts=restarts, seed=seed,
                       objective="ce")
        self.target_classes = target_classes
        self.steers = steers
        self.seed = seed
        self.candidate_counts: dict[str, int] = {}

    def __repr__(self) -> str:
        return (f"AdaptiveAttack(steps={self.pgd.steps}, relative_step={self.pgd.relative_step}, "
                f"restarts={self.pgd.restarts}, target_classes={self.target_classes}, "
                f"steers={self.steers}, saturation={self.saturation})")

    def __call__(self, composed: ComposedClassifier, x: torch.Tensor, target: torch.Tensor,
                 threat: ThreatModel) -> torch.Tensor:
        """For every input the first point found in the threat ball where the composed
        prediction differs from ``target`` (``x`` itself where none is found). ``target`` is
        the clean composed prediction (robustness) or the label (robust accuracy)."""
        outputs = _Outputs(composed)
        device = model_device(composed.core)
        x, target = x.to(device), target.to(device)
        with ExitStack() as stack:
            for _, model in composed.named_models():
                stack.enter_context(eval_mode(model))
            with torch.no_grad():
                classes = outputs.core(x[:1]).shape[1]
                stage_logits = [branch(x) for branch, _ in composed.stages]
            x_adv = x.clone()
            pending = torch.arange(len(x), device=device)
            plans = _objectives(len(composed.stages), classes, self.steers, self.target_classes,
                                self.saturation)
            for name, stage, rank, objective in plans:
                if len(pending) == 0:
                    break
                aim = target[pending]
                if stage is not None:
                    wrong = stage_logits[stage][pending].scatter(1, aim.view(-1, 1), -torch.inf)
                    if rank >= classes - 1:
                        continue
                    aim = wrong.topk(rank + 1, dim=1).indices[:, rank]
                self.pgd.objective = objective
                candidate = self.pgd(outputs, x[pending], aim, threat)
                changed = composed.predict(candidate)[0].to(device) != target[pending]
                x_adv[pending[changed]] = candidate[changed]
                pending = pending[~changed]
                self.candidate_counts[name] = (self.candidate_counts.get(name, 0)
                                               + int(changed.sum()))
        return x_adv
