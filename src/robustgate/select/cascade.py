"""The cascade of the robustness selector: certificate stages of the branch first, the attack only
on what they leave (DESIGN.md section 5, fast selection).

The robustness check asks whether the branch's eval-mode prediction is constant on the threat
ball ∩ domain around an input, as far as the attack finds. A certificate answers part of it for
less: where a bound method (IBP, CROWN-IBP, CROWN) certifies the predicted class on the ball,
no point of it flips the prediction, so no attack can find one and the attack would have
answered "robust" too. :class:`Cascade` is an attack (the signature of ``attacks.Attack``)
that leaves such inputs where they are, so that ``attacks.check_robustness``, the records of
``evaluate`` and the deployed :class:`~robustgate.select.RobustnessSelector` decide through it
unchanged; the other inputs go to the attack.

Two allowances make "certified ⇒ the attack finds no flip" hold in floating point:

- the ball: the attack's points may lie up to ``attacks.robustness.BALL_TOLERANCE`` outside
  ``eps`` (the check accepts them), so the certificates are taken on the ball of
  ``eps + BALL_TOLERANCE``, clipped to the domain like the attack's;
- the margin: float32 bounds are not rigorous at a margin of 0 (rounding in every layer), so an
  input counts as certified only where the certified margin exceeds ``MARGIN_TOLERANCE``.

The cascade then decides like the attack alone except where the attack itself errs. An attack
seeded per input (``attacks.PerInputAttack``, robustgate's PGD) gets each remaining input's
own index, so it starts from the same points as alone and the decisions are the same; another
attack runs on other batches, and may break an input from one start and miss it from another.

Which stages pay is measured (:func:`choose_stages`): on validation inputs, each stage's cost
per input and the inputs it certifies, and the attack's cost on the inputs of each pattern of
certificates; the stages (in the order IBP, CROWN-IBP, CROWN, each taken or left) whose
estimated total is least run, none where none pays, so the cascade is never estimated slower
than the attack alone.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import nn

from robustgate.attacks import Attack, check_robustness
from robustgate.attacks.pgd import run_attack
from robustgate.attacks.robustness import BALL_TOLERANCE
from robustgate.certify import certify_bounds
from robustgate.models.modes import eval_mode, model_device, predict_logits
from robustgate.threat import ThreatModel

CASCADE_STAGES = ("ibp", "crown-ibp", "crown")
"""The certificate stages a cascade may run, cheapest first."""
MARGIN_TOLERANCE = 1e-4
"""The certified margin (logit units) above which an input counts as certified: float32 bounds
are not rigorous at a margin of 0."""
ATTACK = "attack"
"""The name of the last stage, the attack, in the counts of decided inputs."""
T = TypeVar("T")


def attack_ball(threat: ThreatModel) -> ThreatModel:
    """The ball the certificates cover: the threat's, widened by the tolerance the robustness
    check allows the attack's points (``BALL_TOLERANCE``), clipped to the domain alike."""
    return ThreatModel(threat.norm, threat.eps + BALL_TOLERANCE, threat.low, threat.high)


def certified_by(model: nn.Module, x: torch.Tensor, target: torch.Tensor, threat: ThreatModel,
                 method: str) -> torch.Tensor:
    """Where ``method`` certifies ``target`` (the eval-mode prediction) on :func:`attack_ball`
    around ``x``, with a margin above ``MARGIN_TOLERANCE``; on ``x``'s device."""
    predicted, margin = certify_bounds(model, x, attack_ball(threat), method)
    return (predicted == target.to(predicted.device)) & (margin > MARGIN_TOLERANCE)


def describe_route(stages: Sequence[str]) -> str:
    """A cascade's route, its stages in order and the attack last: ``"ibp → crown → attack"``."""
    return " → ".join([*stages, ATTACK])


class Cascade:
    """An attack that first certifies: inputs whose prediction ``target`` one of ``stages``
    certifies on the threat ball are returned unmoved (the check counts them robust), the rest
    go to ``attack``. ``decided`` counts the inputs decided at each stage (``"attack"``: those
    left to the attack, whichever way it decides), over every call. It passes the inputs'
    ``indices`` (their positions in the batch without them) on to an attack seeded per input."""

    seeded_per_input = True

    def __init__(self, attack: Attack, stages: Sequence[str] = CASCADE_STAGES) -> None:
        unknown = [stage for stage in stages if stage not in CASCADE_STAGES]
        if unknown or len(set(stages)) != len(stages):
            raise ValueError(f"cascade stages are distinct ones of {CASCADE_STAGES}, got "
                             f"{list(stages)}")
        self.attack = attack
        self.stages = tuple(stage for stage in CASCADE_STAGES if stage in stages)
        self.decided: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"Cascade(stages={list(self.stages)}, attack={self.attack!r})"

    def __call__(self, model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                 threat: ThreatModel, indices: torch.Tensor | None = None) -> torch.Tensor:
        remaining = torch.arange(len(x), device=x.device)
        with torch.no_grad():
            for stage in self.stages:
                if not len(remaining):
                    break
                certified = certified_by(model, x[remaining], target[remaining], threat, stage)
                self.decided[stage] += int(certified.sum())
                remaining = remaining[~certified]
        self.decided[ATTACK] += len(remaining)
        if not len(remaining):
            return x
        x_adv = x.clone()
        positions = torch.arange(len(x)) if indices is None else indices.cpu()
        x_adv[remaining] = run_attack(self.attack, model, x[remaining], target[remaining], threat,
                                      positions[remaining.cpu()])
        return x_adv


@dataclass
class StageChoice:
    """The stages :func:`choose_stages` chose, and what it measured on ``inputs`` validation
    inputs: seconds per input of each stage it timed (``None``: the model has no bounds), the
    inputs each certifies, and the estimated seconds of every cascade it weighed (``"attack"``
    alone, the others by their stages joined with ``+``)."""

    stages: tuple[str, ...]
    inputs: int
    stage_seconds: dict[str, float | None] = field(default_factory=dict)
    certified: dict[str, int] = field(default_factory=dict)
    estimated_seconds: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        return {"stages": list(self.stages), "inputs": self.inputs,
                "stage_seconds_per_input": self.stage_seconds, "certified": self.certified,
                "estimated_seconds": self.estimated_seconds}


def _timed(call: Callable[[], T]) -> tuple[float, T]:
    """Seconds ``call`` took, and its result."""
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def choose_stages(model: nn.Module, x: torch.Tensor, threat: ThreatModel, attack: Attack,
                  batch_size: int = 500, probe: int = 16) -> StageChoice:
    """The cascade stages that pay for ``model`` at ``threat``, by measured cost per decided
    input on the validation inputs ``x``.

    The attack alone is timed on the inputs of each pattern of certificates (which stages
    certify them) separately, so that the attack's cost on what any cascade leaves is a sum of
    measured parts (robust inputs cost the attack more than those it breaks early). A stage
    is first timed on the first ``probe`` inputs beside the attack there; one that costs more
    per input than the attack does on them is left out untimed further (it could save at most
    the attack's cost, were it to certify everything).
    Every ordered subset of the remaining stages is then estimated (a stage's cost per input
    times the inputs the earlier ones leave, plus the attack's on what all leave) and the
    cheapest chosen; the empty one, the attack alone, is among them."""
    x = x.to(model_device(model))
    with eval_mode(model):
        predicted = predict_logits(model, x, batch_size).argmax(1)
        probed, _ = _timed(lambda: check_robustness(model, x[:probe], threat, attack,
                                                     batch_size))
        stage_seconds: dict[str, float | None] = {}
        certified: dict[str, torch.Tensor] = {}
        for stage in CASCADE_STAGES:
            stage_seconds[stage], mask = _stage_cost(model, x, predicted, threat, stage,
                                                     probed / max(len(x[:probe]), 1),
                                                     batch_size, probe)
            if mask is not None:
                certified[stage] = mask
        timed = list(certified)
        patterns = (torch.stack([certified[stage] for stage in timed], dim=1) if timed
                    else torch.zeros(len(x), 0, dtype=torch.bool))
        attack_on: dict[tuple[bool, ...], float] = {}
        for pattern in {tuple(row) for row in patterns.tolist()}:
            rows = (patterns == torch.tensor(pattern, dtype=torch.bool)).all(dim=1).to(x.device)
            attack_on[pattern], _ = _timed(lambda rows=rows: check_robustness(
                model, x[rows], threat, attack, batch_size))
    stages, estimated = cheapest_cascade(
        {stage: stage_seconds[stage] or 0.0 for stage in timed}, certified, attack_on)
    return StageChoice(stages, len(x), stage_seconds,
                       {stage: int(mask.sum()) for stage, mask in certified.items()}, estimated)


def cheapest_cascade(stage_seconds: dict[str, float], certified: dict[str, torch.Tensor],
                     attack_on: dict[tuple[bool, ...], float]
                     ) -> tuple[tuple[str, ...], dict[str, float]]:
    """The cheapest cascade of the stages of ``stage_seconds`` (seconds per input; in that
    order, each taken or left) and the estimated seconds of every one: a stage costs its
    seconds per input times the inputs the earlier ones leave (``certified``: the inputs each
    certifies), and the attack costs ``attack_on[pattern]`` for the inputs of each pattern of
    certificates (a flag per stage) that no stage taken certifies. The attack alone is named
    ``"attack"``; on a tie the fewer stages win."""
    names = list(stage_seconds)
    size = len(next(iter(certified.values()))) if certified else 0
    estimated = {}
    for taken in itertools.product((False, True), repeat=len(names)):
        stages = [stage for stage, take in zip(names, taken, strict=True) if take]
        left, seconds = torch.ones(size, dtype=torch.bool), 0.0
        for stage in stages:
            seconds += stage_seconds[stage] * int(left.sum())
            left &= ~certified[stage]
        seconds += sum(cost for pattern, cost in attack_on.items()
                       if not any(flag and take
                                  for flag, take in zip(pattern, taken, strict=True)))
        estimated["+".join(stages) or ATTACK] = seconds
    best = min(estimated, key=lambda name: (estimated[name], name.count("+")))
    return (tuple(best.split("+")) if best != ATTACK else ()), estimated


def _stage_cost(model: nn.Module, x: torch.Tensor, predicted: torch.Tensor,
                threat: ThreatModel, stage: str, attack_per_input: float, batch_size: int,
                probe: int) -> tuple[float | None, torch.Tensor | None]:
    """A stage's seconds per input and the inputs it certifies (on the CPU): ``None`` seconds
    where the model has no bounds, ``None`` inputs where the first ``probe`` inputs cost it more
    each than ``attack_per_input``, the attack's on them."""
    probed = x[:probe]
    try:
        seconds, _ = _timed(lambda: certified_by(model, probed, predicted[:probe], threat,
                                                 stage))
    except ValueError:  # bound propagation does not cover the model
        return None, None
    if seconds / max(len(probed), 1) >= attack_per_input:
        return seconds / max(len(probed), 1), None
    seconds, masks = _timed(lambda: [
        certified_by(model, x[start:start + batch_size], predicted[start:start + batch_size],
                     threat, stage).cpu()
        for start in range(0, len(x), batch_size)])
    return (seconds / max(len(x), 1),
            torch.cat(masks) if masks else torch.zeros(0, dtype=torch.bool))
