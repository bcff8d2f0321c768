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

from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robustgate.attacks import PGD
from robustgate.attacks.pgd import logit_margin_from
from robustgate.compose import ComposedClassifier
from robustgate.models.modes import eval_mode, model_device
from robustgate.threat import ThreatModel


@dataclass
class Parts:
    """What a route's objective reads at ``x'``: the core's logits, and per stage the branch's
    logits and the selector's score."""

    core: torch.Tensor
    branches: list[torch.Tensor]
    scores: list[torch.Tensor]


class _Outputs(nn.Module):
    """All of :class:`Parts` from one forward pass, as the one tensor PGD differentiates
    (:meth:`parts` reads it back)."""

    def __init__(self, composed: ComposedClassifier, classes: int) -> None:
        super().__init__()
        self.composed = composed
        self.core = composed.core  # registered, so that the parts' modules are this one's
        self.branches = nn.ModuleList(branch for branch, _ in composed.stages)
        self.classes = classes
        self.input_shape = getattr(composed.core, "input_shape", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        columns = [self.composed.core(x)]
        for branch, selector in self.composed.stages:
            columns += [branch(x), selector.score(x).to(x.dtype).unsqueeze(1)]
        return torch.cat(columns, dim=1)

    def parts(self, outputs: torch.Tensor) -> Parts:
        classes, stages = self.classes, len(self.composed.stages)
        width = classes + 1
        return Parts(outputs[:, :classes],
                     [outputs[:, classes + i * width : classes + i * width + classes]
                      for i in range(stages)],
                     [outputs[:, classes + i * width + classes] for i in range(stages)])


@dataclass(frozen=True)
class Route:
    """One way into the composition's errors (module docstring): through the core while the
    selectors abstain (``stage`` None), or through branch ``stage`` while its selector selects,
    untargeted or raising its confidence in its rank-``rank + 2`` class (``rank`` not None); the
    selectors' scores weighted by ``steer``."""

    stage: int | None
    rank: int | None
    steer: float

    @property
    def name(self) -> str:
        steer = f"steer {self.steer:g}"
        if self.stage is None:
            return "core" if self.steer == 0 else f"core, selectors abstain ({steer})"
        if self.rank is None:
            return f"branch {self.stage} ({steer})"
        return f"branch {self.stage} towards its rank-{self.rank + 2} class ({steer})"

    def objective(self, parts: Parts, aim: torch.Tensor, saturation: float) -> torch.Tensor:
        """What PGD maximizes: ``aim`` is the clean prediction, or the targeted wrong class."""
        capped = self.steer > 0

        def fooling(logits: torch.Tensor) -> torch.Tensor:
            margin = logit_margin_from(logits, aim)
            return margin.clamp(max=saturation) if capped else margin

        def abstaining(upto: int) -> torch.Tensor:
            return sum((parts.scores[j] for j in range(upto)), torch.zeros_like(parts.core[:, 0]))

        if self.stage is None:
            return fooling(parts.core) - self.steer * abstaining(len(parts.scores))
        logits = parts.branches[self.stage]
        if self.rank is None:
            gain = fooling(logits)
        else:
            gain = F.log_softmax(logits, dim=1).gather(1, aim.view(-1, 1))[:, 0]
        return gain + self.steer * (parts.scores[self.stage] - abstaining(self.stage))


def routes(stages: int, steers: Sequence[float], target_classes: int) -> list[Route]:
    """The core alone first, then for every weight of ``steers``: the core with the selectors
    abstaining, and per stage the branch untargeted and towards each of its ``target_classes``
    most likely wrong classes."""
    planned = [Route(None, None, 0.0)]
    for steer in steers:
        if steer > 0:
            planned.append(Route(None, None, steer))
        for stage in range(stages):
            planned.append(Route(stage, None, steer))
            planned += [Route(stage, rank, steer) for rank in range(target_classes)]
    return planned


class AdaptiveAttack:
    """Attacks a :class:`ComposedClassifier` along every route (module docstring).

    Parameters
    ----------
    steps, relative_step, restarts: of the PGD run for each candidate.
    target_classes: wrong classes, per branch, towards which its confidence is raised.
    steers: weights of the selectors' scores in the objectives; every route is tried with each
        (the core alone, without the selectors, always comes first).
    saturation: cap of the logit-margin terms that the selectors' scores are added to.
    seed: seed of the random starts, drawn per input (``attacks.PerInputAttack``): from the
        seed, the input's index in its data set (``indices`` of a call; its position in the
        batch without them) and the run, so that an input's records do not depend on its batch,
        chunk or shard.

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
        self.steps, self.relative_step, self.restarts = steps, relative_step, restarts
        self.saturation = saturation
        self.target_classes = target_classes
        self.steers = steers
        self.seed = seed
        self.candidate_counts: dict[str, int] = {}

    seeded_per_input = True

    def __repr__(self) -> str:
        return (f"AdaptiveAttack(steps={self.steps}, relative_step={self.relative_step}, "
                f"restarts={self.restarts}, target_classes={self.target_classes}, "
                f"steers={self.steers}, saturation={self.saturation})")

    def __call__(self, composed: ComposedClassifier, x: torch.Tensor, target: torch.Tensor,
                 threat: ThreatModel, indices: torch.Tensor | None = None) -> torch.Tensor:
        """For every input the first point found in the threat ball where the composed
        prediction differs from ``target`` (``x`` itself where none is found). ``target`` is
        the clean composed prediction (robustness) or the label (robust accuracy)."""
        device = model_device(composed.core)
        x, target = x.to(device), target.to(device)
        with ExitStack() as stack:
            for _, model in composed.named_models():
                stack.enter_context(eval_mode(model))
            with torch.no_grad():
                classes = composed.core(x[:1]).shape[1]
                stage_logits = [branch(x) for branch, _ in composed.stages]
            outputs = _Outputs(composed, classes)
            x_adv = x.clone()
            pending = torch.arange(len(x), device=device)
            indices = pending.cpu() if indices is None else indices.cpu()
            for route in routes(len(composed.stages), self.steers, self.target_classes):
                if len(pending) == 0:
                    break
                aim = target[pending]
                if route.rank is not None:
                    if route.rank >= classes - 1:
                        continue
                    wrong = stage_logits[route.stage][pending].scatter(1, aim.view(-1, 1),
                                                                       -torch.inf)
                    aim = wrong.topk(route.rank + 1, dim=1).indices[:, route.rank]
                pgd = PGD(steps=self.steps, relative_step=self.relative_step,
                          restarts=self.restarts, seed=self.seed,
                          objective=lambda values, aim, route=route: route.objective(
                              outputs.parts(values), aim, self.saturation))
                candidate = pgd(outputs, x[pending], aim, threat,
                                indices=indices[pending.cpu()])
                changed = composed.predict(candidate)[0].to(device) != target[pending]
                x_adv[pending[changed]] = candidate[changed]
                pending = pending[~changed]
                self.candidate_counts[route.name] = (self.candidate_counts.get(route.name, 0)
                                                     + int(changed.sum()))
        return x_adv
