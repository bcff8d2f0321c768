"""Projected gradient descent (Madry et al.), written here because training needs it inside the
loop. Linf: sign steps; L2: normalized gradient steps; uniform random start in the ball;
projection onto the ball and clamp to the domain after every step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn

from robustgate.inputs import check_inputs, check_outputs
from robustgate.models.modes import as_model_dtype
from robustgate.runner import input_seed
from robustgate.threat import ThreatModel

OBJECTIVES = ("ce", "kl", "margin")

Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``objective(outputs, target) -> per-sample value to maximize``, ``outputs = model(x')``."""


def logit_margin_from(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``max_{j≠target} f_j − f_target``: positive once the prediction left ``target``; unlike
    cross-entropy's, its gradient does not vanish where softmax saturates."""
    own = logits.gather(1, target.view(-1, 1))[:, 0]
    return logits.scatter(1, target.view(-1, 1), -torch.inf).max(dim=1).values - own


class Attack(Protocol):
    def __call__(
        self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, threat: ThreatModel
    ) -> torch.Tensor: ...


@runtime_checkable
class PerInputAttack(Protocol):
    """An attack whose random choices are seeded per input: it takes the inputs' indices in
    their data set, and each input's answer depends on neither its batch nor its neighbours."""

    seeded_per_input: bool

    def __call__(
        self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, threat: ThreatModel,
        indices: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


def run_attack(attack: Attack, model: nn.Module, x: torch.Tensor, target: torch.Tensor,
               threat: ThreatModel, indices: torch.Tensor | None = None) -> torch.Tensor:
    """``attack`` on ``x``, given the inputs' ``indices`` in their data set where it seeds its
    randomness per input (``PerInputAttack``) and they are known."""
    if indices is not None and isinstance(attack, PerInputAttack):
        return attack(model, x, target, threat, indices=indices)
    return attack(model, x, target, threat)


class PGD:
    """PGD that moves the prediction away from ``target``.

    Parameters
    ----------
    steps: gradient steps per restart.
    relative_step: step size as a fraction of ``threat.eps``.
    restarts: independent runs from different random starts.
    random_start: start uniformly in the ball (else at ``x``).
    objective: ``"ce"`` maximizes ``CE(f(x'), target)``; ``"kl"`` maximizes
        ``KL(p(x) || p(x'))`` (TRADES's inner maximization; ``target`` is then unused);
        ``"margin"`` maximizes ``max_{j≠target} f_j(x') − f_target(x')``, whose gradient does
        not vanish where softmax saturates (large logits), unlike cross-entropy's; a callable
        ``objective(model(x'), target)`` maximizes any per-sample objective (the adaptive
        attack on a composition; ``model`` then need not return logits).
    target_classes: after the untargeted restarts, for each of this many classes ``j`` with
        the largest clean logits other than ``target``, one more run maximizing
        ``f_j(x') − f_target(x')`` (the targeted margin: it finds the flips towards a class that
        the untargeted objective, led by the current runner-up, never aims at).
    early_exit: for robustness checks: a sample leaves the batch as soon as its prediction
        differs from ``target``, and the first such point is returned. Without it (training) the
        point of highest objective over the restarts is returned.
    seed: seed of the random starts: each input's start in each run is drawn from the seed, the
        input's index in its data set (``indices`` of a call; its position in the batch without
        them) and the run, so that an input gets the same answer in any batch (``None``:
        PyTorch's global generator, one draw for the batch).
    """

    seeded_per_input = True

    def __init__(
        self,
        steps: int = 10,
        relative_step: float = 0.25,
        restarts: int = 1,
        random_start: bool = True,
        objective: str | Objective = "ce",
        early_exit: bool = False,
        seed: int | None = None,
        target_classes: int = 0,
    ) -> None:
        if steps < 1 or restarts < 1 or target_classes < 0:
            raise ValueError(f"PGD needs steps >= 1, restarts >= 1 and target_classes >= 0, got "
                             f"{steps=}, {restarts=}, {target_classes=}; without a step it never "
                             "moves towards a flip and calls inputs robust that are not")
        if target_classes and callable(objective):
            raise ValueError("target_classes needs logits; it does not combine with a callable "
                             "objective")
        if not relative_step > 0:
            raise ValueError(f"relative_step must be > 0, got {relative_step}")
        if not callable(objective) and objective not in OBJECTIVES:
            raise ValueError(
                f"objective must be one of {OBJECTIVES} or a callable, got {objective!r}"
            )
        if callable(objective) and early_exit:
            raise ValueError("early_exit needs logits; it does not combine with a callable "
                             "objective")
        self.steps = steps
        self.relative_step = relative_step
        self.restarts = restarts
        self.random_start = random_start
        self.objective = objective
        self.early_exit = early_exit
        self.seed = seed
        self.target_classes = target_classes

    def __repr__(self) -> str:
        return (
            f"PGD(steps={self.steps}, relative_step={self.relative_step}, "
            f"restarts={self.restarts}, objective={self.objective!r}, "
            f"target_classes={self.target_classes}, early_exit={self.early_exit})"
        )

    def _loss(
        self, logits: torch.Tensor, target: torch.Tensor, clean_log_probs: torch.Tensor | None,
        toward: torch.Tensor | None,
    ) -> torch.Tensor:
        if callable(self.objective):
            return self.objective(logits, target)
        if toward is not None:
            pair = logits.gather(1, torch.stack([toward, target], dim=1))
            return pair[:, 0] - pair[:, 1]
        if self.objective == "margin":
            return logit_margin_from(logits, target)
        if clean_log_probs is None:
            return F.cross_entropy(logits, target, reduction="none")
        return F.kl_div(
            F.log_softmax(logits, dim=1), clean_log_probs, reduction="none", log_target=True
        ).sum(dim=1)

    def __call__(
        self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, threat: ThreatModel,
        indices: torch.Tensor | None = None,
    ) -> torch.Tensor:
        x = as_model_dtype(x, model)
        if indices is not None and len(indices) != len(x):
            raise ValueError(f"{len(indices)} indices for {len(x)} inputs")
        check_inputs(x, getattr(model, "input_shape", None), threat.low, threat.high)
        threat.check_dimension(x)
        x = x.detach()
        target = target.to(x.device)
        clean_log_probs = towards = None
        if self.objective == "kl" or self.target_classes:
            with torch.no_grad():
                clean_logits = model(x)
            check_outputs(clean_logits, type(model).__name__)
            clean_log_probs = F.log_softmax(clean_logits, dim=1) if self.objective == "kl" else None
            others = clean_logits.scatter(1, target.view(-1, 1), -torch.inf)
            count = min(self.target_classes, clean_logits.shape[1] - 1)
            towards = others.topk(count, dim=1).indices.T
        runs = [None] * self.restarts + ([] if towards is None else list(towards))
        indices = torch.arange(len(x)) if indices is None else indices.cpu()
        best = x.clone()
        best_loss = torch.full((len(x),), -torch.inf, device=x.device)
        fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for run, toward in enumerate(runs):
            active = (~fooled).nonzero().flatten()
            if len(active) == 0 or threat.eps == 0:
                break
            self._run(model, x, target, threat, active, clean_log_probs, toward, best, best_loss,
                      fooled, indices[active.cpu()], run)
        return best

    def _start(self, origin: torch.Tensor, threat: ThreatModel, indices: torch.Tensor, run: int
               ) -> torch.Tensor:
        """The starting points of ``run``: ``origin`` itself, or random in the ball, each
        input's drawn from its own generator where the attack is seeded."""
        if not self.random_start:
            return origin
        if self.seed is None:
            return threat.random_start(origin)
        return torch.cat([
            threat.random_start(origin[position : position + 1], torch.Generator().manual_seed(
                input_seed(self.seed, index, run)))
            for position, index in enumerate(indices.tolist())])

    def _run(
        self,
        model: nn.Module,
        x: torch.Tensor,
        target: torch.Tensor,
        threat: ThreatModel,
        active: torch.Tensor,
        clean_log_probs: torch.Tensor | None,
        toward: torch.Tensor | None,
        best: torch.Tensor,
        best_loss: torch.Tensor,
        fooled: torch.Tensor,
        indices: torch.Tensor,
        run: int,
    ) -> None:
        """One run on the samples ``active`` (targeted at ``toward`` where given); updates
        ``best``, ``best_loss``, ``fooled``."""
        origin, aim = x[active], target[active]
        clean = None if clean_log_probs is None else clean_log_probs[active]
        toward = None if toward is None else toward[active]
        x_adv = self._start(origin, threat, indices, run)
        step_size = self.relative_step * threat.eps
        for step in range(self.steps + 1):
            last = step == self.steps
            with torch.enable_grad():  # also when called under torch.no_grad()
                x_adv = x_adv.detach().requires_grad_(True)
                logits = model(x_adv)
                loss = self._loss(logits, aim, clean, toward)
                gradient = None if last else torch.autograd.grad(loss.sum(), x_adv)[0]
            x_adv, loss = x_adv.detach(), loss.detach()
            if self.early_exit:
                flipped = logits.argmax(dim=1) != aim
                if bool(flipped.any()):
                    best[active[flipped]] = x_adv[flipped]
                    fooled[active[flipped]] = True
                    keep = ~flipped
                    active, origin, aim, x_adv, loss = (
                        active[keep], origin[keep], aim[keep], x_adv[keep], loss[keep]
                    )
                    clean = None if clean is None else clean[keep]
                    toward = None if toward is None else toward[keep]
                    gradient = None if gradient is None else gradient[keep]
                    if len(active) == 0:
                        return
            if last:
                break
            x_adv = threat.project(x_adv + threat.ascent_step(gradient, step_size), origin)
        better = loss > best_loss[active]
        best[active[better]] = x_adv[better]
        best_loss[active[better]] = loss[better]
