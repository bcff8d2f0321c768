"""The composed classifier evaluated offline from per-sample records (DESIGN.md section 1).

The deployed selector ``S`` decides on the input it sees (the robustness selector: is the branch
robust on ``B(x, eps)``?). On clean data the composition answers ``B(x)`` where ``S(x)``, else
``C(x)``:

    composed natural accuracy = S·acc_B + (1 − S)·acc_C

Its robustness needs the selector's decision at every ``x'`` the adversary reaches. Without more
information the indicator form takes the decision on the clean input (the selector not attacked:
the paper's Figure 1 form):

    composed robust accuracy = S·robacc_B + (1 − S)·robacc_C

Given ``stable`` — inputs whose selection cannot change, e.g. the branch robust on
``B(x, 2·eps) ⊃ B(x', eps)`` for every reachable ``x'`` — the sound form counts a selected input
as robust only where it is stable, or where the core is robust and agrees with the branch (a
selected ``x`` has the branch robust on ``B(x, eps)``, so whichever model answers ``x'``, the
answer is the same):

    rob = stable·rob_B + (S − stable)·rob_C·[ŷ_C = ŷ_B] + (1 − S)·rob_C

Abstained inputs keep the core's robustness: the route of steering them into a region where the
branch answers wrongly is left to the adaptive attack (``evaluate.adaptive``). A chain is a
composition whose core is itself a composition.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from robustgate.evaluate.records import Records


def compose_records(branch: Records, core: Records, selected: np.ndarray,
                    stable: np.ndarray | None = None) -> Records:
    """Records of the composition ``(branch, S, core)`` from those of its parts, the selection
    ``S`` and, for the sound form, the inputs whose selection is ``stable`` under attack.

    Robustness is composed at every radius evaluated for both parts.
    """
    selected = np.asarray(selected, dtype=bool)
    stable = selected if stable is None else np.asarray(stable, dtype=bool) & selected
    if not (len(branch) == len(core) == len(selected) == len(stable)):
        raise ValueError(
            f"branch, core and selector cover different numbers of samples: "
            f"{len(branch)}, {len(core)}, {len(selected)}"
        )
    if not np.array_equal(branch.labels, core.labels):
        raise ValueError("branch and core records are for different labels (not the same data)")
    radii = [eps for eps in branch.robust if any(np.isclose(eps, r) for r in core.robust)]
    if not radii:
        raise ValueError(
            f"branch and core share no radius: {sorted(branch.robust)} vs {sorted(core.robust)}"
        )
    agree = branch.predictions == core.predictions
    unstable = selected & ~stable
    return Records(
        labels=branch.labels,
        predictions=np.where(selected, branch.predictions, core.predictions),
        robust={
            eps: np.where(stable, branch.robust[eps],
                          core.robust_at(eps) & (agree | ~unstable))
            for eps in radii
        },
    )


def compose_chain(branches: Sequence[Records], core: Records, selected: Sequence[np.ndarray],
                  stable: Sequence[np.ndarray] | None = None) -> tuple[Records, np.ndarray]:
    """Records of the chain ``(branch_1, S_1) → … → core`` (``stable``: per stage, as in
    :func:`compose_records`) and each input's route (the index of the first stage that selects
    it; ``len(branches)`` for the core)."""
    stable = [None] * len(selected) if stable is None else list(stable)
    if not (len(branches) == len(selected) == len(stable)) or not branches:
        raise ValueError(f"a chain needs one selection per branch, got {len(branches)} branches "
                         f"and {len(selected)} selections")
    composed = core
    for branch, mask, certain in zip(reversed(branches), reversed(selected), reversed(stable),
                                     strict=True):
        composed = compose_records(branch, composed, mask, certain)
    routes = np.full(len(core), len(branches))
    for stage in reversed(range(len(branches))):
        routes[np.asarray(selected[stage], dtype=bool)] = stage
    return composed, routes
