"""The smoothing selector (``selector: smoothing``): a smoothed branch answers where CERTIFY at the
input ``x'`` it sees certifies its smoothed class on the L2 ball of ``κ·r`` (``r`` the L2 radius
covering the threat ball), at the branch's own smoothing settings.

Counted from the branch's certificates (``Selection.smoothing``): a selection is stable where the
radius certified at ``x`` reaches ``certify.stable_radius``, the margin of the deployed
Monte-Carlo decision. The core counts only through a certificate of its own (a smoothed core).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustgate.certify import covering_l2_radius, stable_radius
from robustgate.config import CompositionSettings, SearchSettings, SmoothingSettings, TrainSpec
from robustgate.evaluate import Certificates, Records, Selection
from robustgate.evaluate.certified import certify_or_resume
from robustgate.evaluate.operating_points import SelectionAt
from robustgate.selector_kinds.base import SelectorKind
from robustgate.selector_kinds.run import CompositionRun, uncertified


def smoothing_selection(certificates: Certificates, settings: SmoothingSettings,
                        l2_radius: float) -> SelectionAt:
    """The smoothing selector at ``(eps, κ)`` counted from the branch's ``certificates``, made
    with the same settings as the selector deployed (``l2_radius`` covers the threat ball)."""
    return lambda _, eps, kappa: Selection.smoothing(
        certificates, eps, l2_radius, settings.sigma, settings.n0, settings.n, settings.alpha,
        kappa)


class SmoothingKind(SelectorKind):
    name = "smoothing"
    certified = True
    takes_kappa = True
    smoothed_branches = True

    def evaluate(self, run: CompositionRun, composition: CompositionSettings) -> dict[str, Any]:
        branch_name = composition.branches[0]
        branch = run.certificates[branch_name]
        settings = run.config.models[branch_name].smoothing
        assert settings is not None
        eps, kappa = run.eps, composition.kappa
        dimension = run.test[0][0].numel()
        l2 = covering_l2_radius(run.threat, dimension)
        records = branch.records(run.threat, [eps], dimension)
        selection = smoothing_selection(branch, settings, l2)(records, eps, kappa)
        core = run.certificates.get(composition.core)
        core_records = (core.records(run.threat, [eps], dimension) if core is not None
                        else uncertified(run.records[composition.core], len(branch), eps))
        metrics = run.certified_count(composition, records, core_records, selection, kappa)
        stability = stable_radius(settings.sigma, kappa * l2, l2, settings.n0, settings.n,
                                  settings.alpha)
        run.say(f"[{composition.label}] certified {100 * metrics['certified_accuracy']:.1f}% of "
                f"{len(branch)} (stable where the certified L2 radius is at least "
                f"{stability:.3g})")
        certificates = 3 if core is not None else 2
        return {**metrics, "selector_l2_radius": kappa * l2, "stable_l2_radius": stability,
                "guarantee": f"per input with probability >= "
                             f"{1 - certificates * settings.alpha:g} ({certificates} "
                             f"certificates at alpha {settings.alpha:g}, a union bound)"}

    def search_branch(self, run: CompositionRun, search: SearchSettings, model: nn.Module,
                      spec: TrainSpec, directory: Path, split: str, x: torch.Tensor,
                      y: torch.Tensor) -> tuple[Records, SelectionAt]:
        """One certification per split serves every ``κ``."""
        assert spec.smoothing is not None
        certificates = certify_or_resume(
            directory / "certificates" / f"{split}.csv", model, spec.smoothing, x, y,
            run.progress, f"{directory.name}/{split}")
        dimension = x[0].numel()
        return (certificates.records(run.threat, [run.eps], dimension),
                smoothing_selection(certificates, spec.smoothing,
                                    covering_l2_radius(run.threat, dimension)))

    def report_note(self, label: str, values: dict[str, Any]) -> str | None:
        return (f"{label}: the selector certifies the branch on the L2 ball of "
                f"{values['selector_l2_radius']:.3g} around the input it sees; a selection "
                f"counts as stable where the certified radius at the clean input reaches "
                f"{values['stable_l2_radius']:.3g}, the margin that makes the deployed "
                f"Monte-Carlo selector select every reachable input; {values['guarantee']}.")


SMOOTHING = SmoothingKind()
