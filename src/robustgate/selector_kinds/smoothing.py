"""The smoothing selector (``selector: smoothing``): a smoothed branch answers where CERTIFY at the
input ``x'`` it sees certifies its smoothed class on the L2 ball of ``κ·r`` (``r`` the L2 radius
covering the threat ball), at the branch's own smoothing settings.

Counted from the branch's certificates (``Selection.smoothing``): a selection is stable where the
radius certified at ``x`` reaches ``certify.stable_radius``, the margin of the deployed
Monte-Carlo decision. The core counts only through a certificate of its own: a smoothed core,
deployed as a majority vote of its ``votes`` draws, where its certified radius reaches
``certify.vote_radius``.

Its sequential form (``sequential: true``) deploys the selector as a sequential test
(``Smooth.decide`` up to the settings' ``n`` draws, ``certify.look_schedule``): the evaluation
deploys it on the certified test points (``records/sequential/<composition>.csv``, a resumable
per-sample table every rank of a torchrun run shares), counts its selection, and reports the
model evaluations it spent beside CERTIFY's ``n0 + n``; its stability is counted at
``certify.sequential_stable_radius``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robustgate.certify import Smooth, covering_l2_radius, selector_stable_radius, vote_radius
from robustgate.config import CompositionSettings, SearchSettings, SmoothingSettings, TrainSpec
from robustgate.evaluate import Certificates, Records, Selection
from robustgate.evaluate.certified import certify_or_resume
from robustgate.evaluate.operating_points import SelectionAt
from robustgate.evaluate.records import same_labels
from robustgate.evaluate.results import CertifiedCompositionResult
from robustgate.io import file_name
from robustgate.runner import contiguous_runs, run_per_sample
from robustgate.select import SmoothingSelector
from robustgate.selector_kinds.base import SelectorKind
from robustgate.selector_kinds.run import CompositionRun, uncertified
from robustgate.table import FLAG, INTEGER, Column, Schema, Table

SEQUENTIAL_DECISIONS = Schema("sequential selector's decisions", leading=(
    Column("label", INTEGER), Column("selected", FLAG), Column("prediction", INTEGER),
    Column("model_evaluations", INTEGER)))
# inputs per chunk of that table (and per partial write), as for CERTIFY's certificates
DECISION_CHUNK = 100


def smoothing_selection(certificates: Certificates, settings: SmoothingSettings,
                        l2_radius: float, sequential: bool = False) -> SelectionAt:
    """The smoothing selector at ``(eps, κ)`` counted from the branch's ``certificates``, made
    with the same settings as the selector deployed (``l2_radius`` covers the threat ball;
    ``sequential``: its sequential form)."""
    return lambda _, eps, kappa: Selection.smoothing(certificates, eps, l2_radius, settings,
                                                     kappa, sequential)


def sequential_decisions(selector: SmoothingSelector, x: torch.Tensor, y: torch.Tensor,
                         path: Path, chunk: int, progress: bool = True, description: str = "",
                         rank: int = 0, world_size: int = 1) -> Table:
    """The sequential ``selector``'s decisions on ``(x, y)`` with the model evaluations each
    spent, in the resumable table ``path``, ``chunk`` inputs at a time (``rank`` of
    ``world_size`` its shard); each input's noise is drawn from the selector's seed and its
    index."""
    labels = y.cpu().numpy()

    def compute(indices: np.ndarray) -> Table:
        selected, predictions, evaluations = (torch.cat(parts) for parts in zip(*(
            selector.decide(x[run[0] : run[-1] + 1], offset=int(run[0]))
            for run in contiguous_runs(indices)), strict=True))
        return Table(SEQUENTIAL_DECISIONS, indices, {
            "label": labels[indices], "selected": selected.cpu().numpy(),
            "prediction": predictions.cpu().numpy(),
            "model_evaluations": evaluations.cpu().numpy()}, {})

    return run_per_sample(SEQUENTIAL_DECISIONS, compute, len(x), chunk, (), path,
                          same_labels(labels, "decisions"), progress, description, rank,
                          world_size)


class SmoothingKind(SelectorKind):
    name = "smoothing"
    certified = True
    takes_kappa = True
    smoothed_branches = True
    result_type = CertifiedCompositionResult
    options = ("sequential",)

    def label(self, composition: CompositionSettings) -> str | None:
        return "smoothing: sequential" if composition.sequential else self.name

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
        sequential = composition.sequential
        selection = smoothing_selection(branch, settings, l2, sequential)(records, eps, kappa)
        extra: dict[str, Any] = {}
        if sequential:
            selection, extra = self._sequential(run, composition, selection, kappa * l2)
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
        stability = selector_stable_radius(settings, kappa * l2, l2, sequential)
        run.say(f"[{composition.label}] certified {100 * result.certified_accuracy:.1f}% of "
                f"{len(branch)} (stable where the certified L2 radius is at least "
                f"{stability:.3g})")
        if core is not None:
            failure = 2 * settings.alpha + 2 * core_settings.alpha
            guarantee = (f"per input with probability >= {1 - failure:g} (the branch's "
                         "certificate and its deployed selector, the core's certificate and its "
                         f"deployed vote of {core_settings.votes}, a union bound)")
            extra["core_vote_l2_radius"] = voted
        else:
            guarantee = (f"per input with probability >= {1 - 2 * settings.alpha:g} (2 "
                         f"certificates at alpha {settings.alpha:g}, a union bound)")
        result.extras.update({"selector_l2_radius": kappa * l2, "stable_l2_radius": stability,
                              **extra, "guarantee": guarantee})
        return result

    def _sequential(self, run: CompositionRun, composition: CompositionSettings,
                    selection: Selection, radius: float) -> tuple[Selection, dict[str, Any]]:
        """The sequential selector deployed at the L2 ``radius`` on the certified test points
        (seeded by the run's seed and each input's index): its selection replaces the one read
        from the certificates, and the model evaluations it spent are reported beside
        CERTIFY's, with the selections that differ."""
        name = composition.branches[0]
        settings = run.config.models[name].smoothing
        assert settings is not None
        selector = SmoothingSelector(Smooth.from_settings(run.models[name], settings), radius,
                                     settings, seed=run.config.seed, sequential=True)
        path = run.out / "records" / "sequential" / f"{file_name(composition.label)}.csv"
        decisions = run.shared(sequential_decisions, selector, *run.certified_test, path,
                               DECISION_CHUNK, description=f"{composition.label}/sequential")
        deployed = decisions.columns["selected"]
        evaluations = float(decisions.columns["model_evaluations"].mean())
        differing = np.flatnonzero(deployed != selection.selected)
        run.say(f"[{composition.label}] sequential selector: {evaluations:.0f} model "
                f"evaluations per input (CERTIFY {settings.n0 + settings.n}), {len(differing)} "
                "selections differ")
        return replace(selection, selected=deployed), {"sequential": {
            "model_evaluations_per_input": evaluations,
            "certify_evaluations_per_input": settings.n0 + settings.n,
            "differing_selections": len(differing), "differing_indices": differing.tolist()}}

    def search_branch(self, run: CompositionRun, search: SearchSettings, model: nn.Module,
                      spec: TrainSpec, directory: Path, split: str, x: torch.Tensor,
                      y: torch.Tensor) -> tuple[Records, SelectionAt]:
        """One certification per split serves every ``κ``."""
        assert spec.smoothing is not None
        certificates = run.shared(certify_or_resume, directory / "certificates" / f"{split}.csv",
                                  model, spec.smoothing, x, y,
                                  description=f"{directory.name}/{split}")
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
                f"Monte-Carlo selector select every reachable input; {extras['guarantee']}."
                + _sequential_note(extras.get("sequential")))


def _sequential_note(sequential: dict[str, Any] | None) -> str:
    if sequential is None:
        return ""
    return (f" Deployed as a sequential test: {sequential['model_evaluations_per_input']:.0f} "
            f"model evaluations per input against CERTIFY's "
            f"{sequential['certify_evaluations_per_input']}, "
            f"{sequential['differing_selections']} selections differing from CERTIFY's.")


SMOOTHING = SmoothingKind()

