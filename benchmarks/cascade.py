"""The robustness selector's cascade (``select.Cascade``) against the attack alone: time ratio,
inputs decided at each stage, and the decisions that differ, per branch, side by side in one
run.

Branches: reduced versions of the shipped ``ibp`` (configs/mnist-bounds.yaml), ``trades`` and
``era`` (configs/mnist-compose.yaml) branches, trained here briefly (``support/branches.py``).
The check: the shipped evaluation attack (``config.EVALUATION_ATTACK``: margin PGD, 100 steps,
then 3 targeted classes, early exit) at eps∞ = 0.1, batch 500, on the first ``IMAGES`` MNIST
test images (default 300; ``ROBUSTGATE_BENCH_REPEATS`` rounds, 3 by default); the stages
chosen by ``select.choose_stages`` on the first 256 training images beyond those the branches
were trained on. One thread.

    .venv/bin/python benchmarks/cascade.py            # reduced: 300 test images
    ROBUSTGATE_CASCADE_IMAGES=2000 .venv/bin/python benchmarks/cascade.py   # the issue's 2,000
    ROBUSTGATE_CASCADE_BRANCHES=ibp .venv/bin/python benchmarks/cascade.py  # one branch
    ROBUSTGATE_CASCADE_CHECKPOINT=runs/mnist-bounds/models/ibp/best.safetensors \
        .venv/bin/python benchmarks/cascade.py   # a fully trained branch instead of the reduced

With ``ROBUSTGATE_CASCADE_CHECKPOINT`` the branch is that checkpoint (e.g. the ``ibp`` model a
run of configs/mnist-bounds.yaml trained), its stages chosen on the same 256 training images
(possibly among those it was trained on: they choose the stages, never a decision counted here).

A differing decision is one where the attack alone and the attack after the stages (the same
attack, on other batches, so from other random starts) disagree; the cascade never certifies an
input the attack breaks (``tests/test_cascade.py``), so each difference is the attack breaking
an input on one run and missing it on the other.
"""

from __future__ import annotations

import os

import torch
from support.branches import TRAINING_IMAGES, branch, branch_or_checkpoint, describe
from support.harness import interleaved, mnist, start, table

from robustgate.attacks import Attack, build_attack, check_robustness
from robustgate.config import EVALUATION_ATTACK
from robustgate.select import Cascade, choose_stages
from robustgate.threat import ThreatModel

IMAGES = int(os.environ.get("ROBUSTGATE_CASCADE_IMAGES", "300"))
BRANCHES = os.environ.get("ROBUSTGATE_CASCADE_BRANCHES", "ibp,trades,era").split(",")
EPS, BATCH, MEASURED = 0.1, 500, 256


def main() -> None:
    start("cascade: certificate stages, then the attack, against the attack alone")
    x, _, source = mnist("test", IMAGES)
    train, _, _ = mnist("train", TRAINING_IMAGES + MEASURED)
    validation = train[TRAINING_IMAGES:]
    threat = ThreatModel("linf", EPS)
    attack = build_attack(EVALUATION_ATTACK, seed=0)
    print(f"{len(x)} images of {source}, eps {EPS} (linf), batch {BATCH}, attack {attack!r}")
    if "ROBUSTGATE_CASCADE_CHECKPOINT" in os.environ:
        compare(*branch_or_checkpoint("checkpoint", "ROBUSTGATE_CASCADE_CHECKPOINT"), x,
                validation, threat, attack)
        return
    for name in BRANCHES:
        compare(branch(name), describe(name), x, validation, threat, attack)


def compare(model: torch.nn.Module, description: str, x: torch.Tensor, validation: torch.Tensor,
            threat: ThreatModel, attack: Attack) -> None:
    """The cascade chosen for ``model`` against the attack alone on ``x``."""
    print(f"-- {description}")
    choice = choose_stages(model, validation, threat, attack, BATCH)
    print(f"stages chosen on {choice.inputs} validation images: {list(choice.stages)}; "
          f"seconds per input {choice.stage_seconds}; estimated seconds "
          + ", ".join(f"{key} {value:.2f}" for key, value in choice.estimated_seconds.items()))
    decisions: dict[str, torch.Tensor] = {}
    cascade = Cascade(attack, choice.stages)

    def alone() -> None:
        decisions["attack alone"] = check_robustness(model, x, threat, attack, BATCH)[1]

    def cascaded() -> None:
        cascade.decided.clear()
        decisions["cascade"] = check_robustness(model, x, threat, cascade, BATCH)[1]

    # no warm-up round: choosing the stages ran the attack and every stage on this model
    table(interleaved({"attack alone": alone, "cascade": cascaded}, warm_up=False),
          "attack alone", per=len(x), unit="image")
    differing = (decisions["attack alone"] != decisions["cascade"]).nonzero().flatten()
    print(f"decided per stage {dict(cascade.decided)}; robust {int(decisions['cascade'].sum())} "
          f"of {len(x)}; differing decisions {len(differing)} "
          f"({100 * (1 - len(differing) / len(x)):.2f}% identical) at {differing.tolist()}")


if __name__ == "__main__":
    main()
