"""The smoothing selector (``selector: smoothing``): a smoothed branch answers where CERTIFY at the
input ``x'`` it sees certifies its smoothed class on the L2 ball of ``κ·r`` (``r`` the L2 radius
covering the threat ball), at the branch's own smoothing settings.

Counted from the branch's certificates (``Selection.smoothing``): a selection is stable where the
radius certified at ``x`` reaches ``certify.stable_radius``, the margin of the deployed
Monte-Carlo decision. The core counts only through a certificate of its own: a smoothed core,
deployed as a majority vote of its ``votes`` draws, where its certified radius reaches
``certify.vote_radius``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from robustgate.certify import covering_l2_radius, stable_radius, vote_radius
from robustgate.config import CompositionSettings, SearchSettings, SmoothingSettings, TrainSpec
from robustgate.evaluate import Certificates, Records, Selection
from robustgate.evaluate.certified import certify_or_resume
from robustgate.evaluate.operating_points import SelectionAt
from robustgate.evaluate.results import CertifiedCompositionResult
from robustgate.selector_kinds.base import SelectorKind
from robustgate.selector_kinds.run import CompositionRun, uncertified


def smoothing_selection(certificates: Certificates, settings: SmoothingSettings,
                        l2_radius: float) -> SelectionAt:
    """The smoothing selector at ``(eps, κ)`` counted from the branch's ``certificates``, made
    with the same settings as the selector deployed (``l2_radius`` covers the threat ball)."""
    return lambda _, eps, kappa: Selection.smoothing(certificates, eps, l2_radius, settings,
                                                     kappa)


class SmoothingKind(SelectorKind):
    name = "smoothing"
    certified = True
    takes_kappa = True
    smoothed_branches = True
    result_type = CertifiedCompositionResult

    def evaluate(self, run: CompositionRun, composition: CompositionSettings
                 ) -> CertifiedCompositionResult:
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
        core_settings = run.config.models[composition.core].smoothing
        if core is not None:
            assert core_settings is not None
            voted = vote_radius(core_settings.sigma, l2, core_settings.votes, core_settings.alpha)
            core_records = Records(core.labels, core.predictions,
                                   {eps: core.certified_at(voted)})
        else:
            core_records = uncertified(run.records[composition.core], len(branch), eps)
        result = run.certified_count(composition, records, core_records, selection, kappa)
        stability = stable_radius(settings.sigma, kappa * l2, l2, settings.n0, settings.n,
                                  settings.alpha)
        run.say(f"[{composition.label}] certified {100 * result.certified_accuracy:.1f}% of "
                f"{len(branch)} (stable where the certified L2 radius is at least "
                f"{stability:.3g})")
        if core is not None:
            failure = 2 * settings.alpha + 2 * core_settings.alpha
            guarantee = (f"per input with probability >= {1 - failure:g} (the branch's "
                         "certificate and its deployed selector, the core's certificate and its "
                         f"deployed vote of {core_settings.votes}, a union bound)")
            extra = {"core_vote_l2_radius": voted}
        else:
            guarantee = (f"per input with probability >= {1 - 2 * settings.alpha:g} (2 "
                         f"certificates at alpha {settings.alpha:g}, a union bound)")
            extra = {}
        result.extras.update({"selector_l2_radius": kappa * l2, "stable_l2_radius": stability,
                              **extra, "guarantee": guarantee})
        return result

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

    def report_note(self, label: str, result: CertifiedCompositionResult) -> str | None:
        extras = result.extras
        return (f"{label}: the selector certifies the branch on the L2 ball of "
                f"{extras['selector_l2_radius']:.3g} around the input it sees; a selection "
                f"counts as stable where the certified radius at the clean input reaches "
                f"{extras['stable_l2_radius']:.3g}, the margin that makes the deployed "
                f"Monte-Carlo selector select every reachable input; {extras['guarantee']}.")


SMOOTHING = SmoothingKind()
