"""The composed classifier counted offline from per-sample records (DESIGN.md section 1): the one
place where it is decided what counts as robust.

The deployed selector ``S`` decides on the input it sees. On clean data the composition answers
``B(x)`` where ``S(x)``, else ``C(x)``:

    composed natural accuracy = S·acc_B + (1 − S)·acc_C

An adversary who moves ``x`` to any ``x'`` in ``B(x, eps)`` also moves the selector's decision.
What a selector's decision at ``x`` says about every reachable ``x'`` is a :class:`Selection`:

- ``stable``: every reachable ``x'`` is selected and the branch answers ``ŷ_B(x)`` there;
- ``consistent``: wherever a reachable ``x'`` is selected, the branch answers ``ŷ_B(x)``;
- ``unreachable``: no reachable ``x'`` is selected, so the core answers every one.

Every reachable answer is then ``ŷ_B(x)`` or, where the core is robust, ``ŷ_C(x)``, and the
composition's robustness indicator is

    rob = stable ∨ (rob_C ∧ ((consistent ∧ ŷ_B = ŷ_C) ∨ unreachable))

so that its robust accuracy is ``acc_B · (T ∨ robacc_C)`` for the robustness selector (``T`` the
stable selection) and ``robacc_B · robacc_C`` for selectors an adversary moves freely. A chain is
a composition whose core is itself a composition, counted stage by stage. The form is a lower
bound on the truth as far as the robustness checks behind the records are exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from robustgate.certify import stable_radius
from robustgate.config import SmoothingSettings
from robustgate.evaluate.certified import Certificates
from robustgate.evaluate.metrics import robustness_metrics, selection_metrics
from robustgate.evaluate.records import Records
from robustgate.evaluate.statistics import clopper_pearson
from robustgate.table import check_same_index


@dataclass(frozen=True)
class Selection:
    """A selector's decisions on clean inputs, and what they imply under attack at ``eps``
    (module docstring). Build one with :meth:`robustness`, :meth:`scores` or :meth:`unattacked`.
    """

    eps: float
    selected: np.ndarray
    stable: np.ndarray
    consistent: np.ndarray
    unreachable: np.ndarray

    def __post_init__(self) -> None:
        arrays = [np.asarray(getattr(self, name), dtype=bool)
                  for name in ("selected", "stable", "consistent", "unreachable")]
        if len({a.shape for a in arrays}) != 1 or arrays[0].ndim != 1:
            raise ValueError(f"a selection needs four 1-D indicators of one length, got shapes "
                             f"{[a.shape for a in arrays]}")
        selected, stable, consistent, unreachable = arrays
        object.__setattr__(self, "selected", selected)
        object.__setattr__(self, "stable", stable & selected)
        object.__setattr__(self, "consistent", consistent)
        object.__setattr__(self, "unreachable", unreachable & ~selected)

    def __len__(self) -> int:
        return len(self.selected)

    @classmethod
    def robustness(cls, branch: Records, eps: float, kappa: float = 1.0) -> Selection:
        """The robustness selector deployed at ``κ·eps`` (``κ = kappa ≥ 1``): it selects
        ``x'`` where the branch is robust on ``B(x', κ·eps)``.

        - Stable where the branch is robust on ``B(x, (κ+1)·eps)``, which contains every
          ``B(x', κ·eps)``: the stability radius is derived from the deployed one, never set.
        - Consistent everywhere: a selected ``x'`` has the branch robust on ``B(x', κ·eps) ∋ x``.
        - Unreachable where the branch is not robust on ``B(x, (κ−1)·eps)`` (``κ > 1``), which
          lies inside every ``B(x', κ·eps)``; counted only when the records hold that radius.
        """
        if not kappa >= 1:
            raise ValueError(f"the robustness selector's kappa must be >= 1, got {kappa}")
        if not (math.isfinite(eps) and eps >= 0):
            raise ValueError(f"eps must be a finite number >= 0, got {eps}")
        selected = branch.robust_at(kappa * eps)
        stable = branch.robust_at((kappa + 1) * eps)
        inner = (kappa - 1) * eps
        unreachable = (~branch.robust_at(inner) if kappa > 1 and branch.has_radius(inner)
                       else np.zeros(len(branch), bool))
        return cls(eps, selected, stable, np.ones(len(branch), bool), unreachable)

    @classmethod
    def bounds(cls, deployed: Records, interval: Records, eps: float, kappa: float = 1.0,
               with_interval_bounds: bool = True) -> Selection:
        """The bound selector deployed at ``κ·eps``: it selects ``x'`` where its bound method
        (``deployed``: certified flags by that method) certifies the branch on ``B(x', κ·eps)``.

        - Stable where IBP (``interval``) certifies the branch on ``B(x, (κ+1)·eps)``, if the
          deployed method certifies wherever IBP does (``with_interval_bounds``: ``ibp`` and
          ``ibp+crown``): interval bounds are monotone under inclusion, so IBP then certifies
          every ``B(x', κ·eps)`` inside. CROWN alone gives no stability (it adapts to the region
          and may miss what IBP certifies), nor does CROWN-IBP.
        - Consistent everywhere: a certified ``B(x', κ·eps)`` holds ``x``.
        - Nothing is counted as unreachable.

        A deterministic guarantee: the count holds for every input it counts."""
        if not kappa >= 1:
            raise ValueError(f"the bound selector's kappa must be >= 1, got {kappa}")
        none = np.zeros(len(deployed), bool)
        stable = interval.robust_at((kappa + 1) * eps) if with_interval_bounds else none
        return cls(eps, deployed.robust_at(kappa * eps), stable, ~none, none)

    @classmethod
    def smoothing(cls, branch: Certificates, eps: float, l2_radius: float,
                  settings: SmoothingSettings, kappa: float = 1.0) -> Selection:
        """The smoothing selector deployed at ``κ·eps`` with the branch's smoothing ``settings``
        (σ, ``n0``, ``n``, α: those the certificates were made with): it selects ``x'`` where
        ``certify(x', n0, n, α)`` certifies the branch's smoothed class on the L2 ball of
        ``κ·l2_radius`` (``l2_radius`` covers the threat ball of ``eps``).

        - Stable where the certified radius at ``x`` reaches ``certify.stable_radius``: then the
          deployed selector selects every reachable ``x'``, with the class certified at ``x``,
          with probability at least ``1 − α`` each. A Monte-Carlo radius at ``x'`` can fall below
          ``κ·l2_radius`` where the exact one clears it, so ``(κ+1)·l2_radius`` alone would not do.
        - Consistent everywhere: a selection at ``x'`` certifies ``g`` on ``B(x', κ·l2_radius)``,
          which holds ``x``, so ``g(x') = g(x)`` unless that certificate fails (probability α).
        - Nothing is counted as unreachable.

        Per input the count thus holds with probability at least ``1 − 2α`` (the certificate at
        ``x`` and the deployed selector's, a union bound)."""
        if not kappa >= 1:
            raise ValueError(f"the smoothing selector's kappa must be >= 1, got {kappa}")
        selected = branch.certified_at(kappa * l2_radius)
        stable = branch.certified_at(stable_radius(
            settings.sigma, kappa * l2_radius, l2_radius, settings.n0, settings.n, settings.alpha))
        none = np.zeros(len(branch), bool)
        return cls(eps, selected, stable, ~none, none)

    @classmethod
    def scores(cls, branch: Records, selected: np.ndarray, eps: float) -> Selection:
        """A selector whose decision an adversary moves freely (softmax response, entropy, a
        learned gate): nothing is stable or unreachable, and the branch answers ``ŷ_B(x)``
        wherever it is selected only where it is robust itself."""
        none = np.zeros(len(branch), bool)
        return cls(eps, selected, none, branch.robust_at(eps), none)

    @classmethod
    def unattacked(cls, branch: Records, selected: np.ndarray, eps: float) -> Selection:
        """The selection taken on the clean input, as if the selector were not attacked (the
        paper's Figure 1): ``S·robacc_B + (1 − S)·robacc_C``. Not a robust accuracy."""
        selected = np.asarray(selected, dtype=bool)
        return cls(eps, selected, selected & branch.robust_at(eps),
                   np.zeros(len(branch), bool), ~selected)


def compose_records(branch: Records, core: Records, selection: Selection) -> Records:
    """Records of the composition ``(branch, S, core)`` at ``selection.eps``: the composed
    answers on clean inputs and the robustness indicator of the module docstring."""
    if not (len(branch) == len(core) == len(selection)):
        raise ValueError(
            f"branch, core and selector cover different numbers of samples: "
            f"{len(branch)}, {len(core)}, {len(selection)}"
        )
    check_same_index([branch, core], "composing branch and core records")
    if not np.array_equal(branch.labels, core.labels):
        raise ValueError("branch and core records are for different labels (not the same data)")
    agree = branch.predictions == core.predictions
    core_answers = selection.consistent & agree | selection.unreachable
    robust = selection.stable | core.robust_at(selection.eps) & core_answers
    return Records(
        labels=branch.labels,
        predictions=np.where(selection.selected, branch.predictions, core.predictions),
        robust={selection.eps: robust},
    )


def compose_chain(branches: Sequence[Records], core: Records, selections: Sequence[Selection]
                  ) -> tuple[Records, np.ndarray]:
    """Records of the chain ``(branch_1, S_1) → … → core``, counted stage by stage, and each
    input's route (the index of the first stage that selects it; ``len(branches)`` for the
    core)."""
    if len(branches) != len(selections) or not branches:
        raise ValueError(f"a chain needs one selection per branch, got {len(branches)} branches "
                         f"and {len(selections)} selections")
    composed = core
    for branch, selection in zip(reversed(branches), reversed(selections), strict=True):
        composed = compose_records(branch, composed, selection)
    routes = np.full(len(core), len(branches))
    for stage in reversed(range(len(branches))):
        routes[selections[stage].selected] = stage
    return composed, routes


def unattacked_robust_accuracy(branches: Sequence[Records], core: Records,
                               selections: Sequence[Selection]) -> float:
    """The chain's robust accuracy with every selection taken on the clean input (the paper's
    Figure 1), reported beside the sound form as what it is: not a robust accuracy."""
    clean = [Selection.unattacked(branch, selection.selected, selection.eps)
             for branch, selection in zip(branches, selections, strict=True)]
    composed, _ = compose_chain(branches, core, clean)
    return float((composed.accurate & composed.robust_at(selections[0].eps)).mean())


def route_counts(accurate: np.ndarray, routes: np.ndarray, stages: int) -> dict[str, Any]:
    """Correct and wrong answers per route (``branch i`` …, ``core``)."""
    names = [f"branch {i}" for i in range(stages)] + ["core"]
    return {name: {"correct": int((accurate & (routes == i)).sum()),
                   "wrong": int((~accurate & (routes == i)).sum())}
            for i, name in enumerate(names)}


def composition_metrics(branches: Sequence[Records], core: Records,
                        selections: Sequence[Selection]) -> tuple[dict[str, Any], Records,
                                                                  np.ndarray]:
    """The chain's metrics, counted in the sound form (natural and robust accuracy, robust
    inaccuracy, non-robust; the first branch's selection rate, its accuracy on the selected
    inputs, the share of stable selections; the unattacked form beside them; correct and wrong
    answers per route), with its records and routes."""
    composed, routes = compose_chain(branches, core, selections)
    eps = selections[0].eps
    metrics = {
        **robustness_metrics(composed.accurate, composed.robust_at(eps)),
        **selection_metrics(branches[0].accurate, selections[0].selected),
        "stable_rate": float(selections[0].stable.mean()) if len(core) else None,
        "unattacked_robust_accuracy": unattacked_robust_accuracy(branches, core, selections),
        "routes": route_counts(composed.accurate, routes, len(branches)),
    }
    return metrics, composed, routes


def compare_with_attack(attacked: Records, counted: Records | None, eps: float
                        ) -> dict[str, Any]:
    """The composition attacked end to end (``attacked``: records of the whole system under an
    attack on the first ``len(attacked)`` inputs) against its count (``counted``: the sound
    form's records, ``None`` where nothing is counted, as for the mixing baseline): both robust
    accuracies with their Clopper–Pearson intervals, their difference in points, and the
    inputs where they disagree (those counted but broken also by index). An input counted robust
    and accurate yet broken by the attack is where the count is unsound (its robustness checks
    were weaker than the attack)."""
    count = len(attacked)
    attacked_robust = attacked.accurate & attacked.robust_at(eps)
    comparison: dict[str, Any] = {
        "samples": count,
        "robust_accuracy": float(attacked_robust.mean()),
        "robust_accuracy_interval": clopper_pearson(int(attacked_robust.sum()), count),
        "counted_robust_accuracy": None,
        "difference_points": None,
    }
    if counted is None:
        return comparison
    if len(counted) < count or not np.array_equal(counted.labels[:count], attacked.labels):
        raise ValueError(f"the attacked records ({count} samples) are not the first samples of "
                         f"the counted ones ({len(counted)} samples)")
    counted_robust = (counted.accurate & counted.robust_at(eps))[:count]
    return {
        **comparison,
        "counted_robust_accuracy": float(counted_robust.mean()),
        "counted_robust_accuracy_interval": clopper_pearson(int(counted_robust.sum()), count),
        "difference_points": round(100 * float(counted_robust.mean() - attacked_robust.mean()),
                                   2),
        "counted_but_broken": int((counted_robust & ~attacked_robust).sum()),
        "counted_but_broken_indices": np.flatnonzero(counted_robust & ~attacked_robust).tolist(),
        "held_but_not_counted": int((attacked_robust & ~counted_robust).sum()),
        "natural_agrees_with_count": bool(
            np.array_equal(attacked.predictions, counted.predictions[:count])),
    }
