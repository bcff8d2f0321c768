"""The composed classifier evaluated offline, in the indicator form of DESIGN.md section 1.

Where the selector selects, every per-sample indicator is the branch's; elsewhere the core's:

    composed natural accuracy = S·acc_B + (1 − S)·acc_C
    composed robust accuracy  = S·robacc_B + (1 − S)·robacc_C

With ``S`` the branch's robustness at ``2·eps`` this is the sound form; with ``S`` at ``eps``
(the selector not attacked) it is the paper's Figure 1 form. A chain is a composition whose core
is itself a composition.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from robustgate.evaluate.records import Records


def compose_records(branch: Records, core: Records, selected: np.ndarray) -> Records:
    """Records of the composition ``(branch, S, core)`` from those of its parts and ``S``.

    Robustness is composed at every radius evaluated for both parts.
    """
    selected = np.asarray(selected, dtype=bool)
    if not (len(branch) == len(core) == len(selected)):
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
    return Records(
        labels=branch.labels,
        predictions=np.where(selected, branch.predictions, core.predictions),
        robust={
            eps: np.where(selected, branch.robust[eps], core.robust_at(eps)) for eps in radii
        },
    )


def compose_chain(branches: Sequence[Records], core: Records, selected: Sequence[np.ndarray]
                  ) -> tuple[Records, np.ndarray]:
    """Records of the chain ``(branch_1, S_1) → … → core`` and each input's route (the index of
    the first stage that selects it; ``len(branches)`` for the core)."""
    if len(branches) != len(selected) or not branches:
        raise ValueError(f"a chain needs one selection per branch, got {len(branches)} branches "
                         f"and {len(selected)} selections")
    composed = core
    for branch, mask in zip(reversed(branches), reversed(selected), strict=True):
        composed = compose_records(branch, composed, mask)
    routes = np.full(len(core), len(branches))
    for stage in reversed(range(len(branches))):
        routes[np.asarray(selected[stage], dtype=bool)] = stage
    return composed, routes
