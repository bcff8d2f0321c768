"""A selector kind: everything a name under a composition's ``selector:`` means, in one object.

A kind owns its part of the config (which settings it takes, and which branches), how its
deployed selector is built, which records or certificates its count needs (the radii, derived
from ``κ``), its sound count (``evaluate.Selection``), its knob for operating points, and what the
report says about it. A kind is registered in ``registry.SELECTOR_KINDS`` under its name; the
config, the command line, the pipeline and the report ask the registry, never test a name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustgate.attacks import Attack
from robustgate.config import CompositionSettings, SearchSettings, TrainSpec
from robustgate.evaluate import Records, Selection
from robustgate.evaluate.operating_points import SelectionAt
from robustgate.evaluate.results import CompositionResult, Result
from robustgate.registry import SELECTOR_KINDS
from robustgate.select import Selector
from robustgate.selector_kinds.run import CompositionRun
from robustgate.threat import ThreatModel


class SelectorKind:
    """The defaults of a kind: one branch, no knob, nothing certified, nothing searched."""

    name: str = ""
    # how the report's plots mark its compositions
    marker: str = "o"
    # counted from certificates on the certified test points (else from attack records)
    certified: bool = False
    # the knob: deployed at κ·eps (``kappa``), and κ chosen on validation data
    # (``operating_point``) where it may be
    takes_kappa: bool = False
    chooses_operating_point: bool = False
    # stages of a chain (branch_1 → branch_2 → … → core)
    chains: bool = False
    # composes smoothed branches (and only it does)
    smoothed_branches: bool = False
    # the composition whose composed natural accuracy the calibrated selectors match
    calibration_reference: bool = False
    # deployed exactly on a grid of two-dimensional data (``evaluate.Grid``)
    exact_on_grid: bool = False
    # settings of ``config.CompositionSettings`` only this kind reads
    options: tuple[str, ...] = ()
    # what :meth:`evaluate` returns, and ``metrics.json`` reads back into
    result_type: type[Result] = CompositionResult

    def register(self) -> SelectorKind:
        SELECTOR_KINDS.register(self.name, self)
        return self

    # -- its part of the config ----------------------------------------------------------------

    def label(self, composition: CompositionSettings) -> str | None:
        """What the composition's label says of the selector (``None``: nothing)."""
        return self.name

    def check_branch(self, spec: TrainSpec) -> str | None:
        """Why a model of ``spec`` cannot be this kind's branch, past the rule of smoothed
        models (``None``: it can)."""
        return None

    def refuses(self, spec: TrainSpec, recipe: bool = False) -> str | None:
        """Why a model of ``spec`` (a search's ``recipe``) cannot be this kind's branch: a
        smoothed model composes exactly under the kinds of smoothed branches."""
        if (spec.smoothing is not None) != self.smoothed_branches:
            names = "/".join(k.name for k in SELECTOR_KINDS.values() if k.smoothed_branches)
            if recipe:
                return (f"the {names} selector takes smoothed branches (the recipe with "
                        "smoothing settings), and smoothed branches compose only under it")
            return (f"the {names} selector takes a smoothed branch (a model with smoothing "
                    "settings), and smoothed models compose only under it")
        return self.check_branch(spec)

    def search_branch(self, run: CompositionRun, search: SearchSettings, model: nn.Module,
                      spec: TrainSpec, directory: Path, split: str, x: torch.Tensor,
                      y: torch.Tensor) -> tuple[Records, SelectionAt]:
        """A searched candidate's records on one split (written under ``directory``) and its
        counted selection at ``(eps, κ)``."""
        raise ValueError(f"the {self.name} selector is not searched: search under one of "
                         f"{[k.name for k in SELECTOR_KINDS.values() if k.searchable]}")

    @property
    def searchable(self) -> bool:
        return type(self).search_branch is not SelectorKind.search_branch

    # -- what its count needs --------------------------------------------------------------------

    def selection_radii(self, eps: float, kappa: float) -> set[float]:
        """The radii at which a branch's records are read to count the selector deployed at
        ``κ·eps``."""
        raise ValueError(f"the {self.name!r} selector is counted at no radius of its own")

    def attack_radii(self, composition: CompositionSettings, eps: float, split: str
                     ) -> set[float]:
        """The radii a branch's attack records need on ``split`` (``test`` or ``validation``)."""
        return set()

    def bound_methods(self, composition: CompositionSettings) -> set[str]:
        """The bound methods a branch is certified by for this composition."""
        return set()

    def bound_radii(self, composition: CompositionSettings, eps: float, split: str
                    ) -> set[float]:
        """The radii a branch's bound certificates need on ``split``."""
        return set()

    def attacked_selections(self, branches: list[Records], eps: float, kappa: float
                            ) -> list[Selection] | None:
        """The selections counted from attack records alone on another split (``None``: this
        kind is not counted so)."""
        return None

    # -- deployed and counted --------------------------------------------------------------------

    def evaluate(self, run: CompositionRun, composition: CompositionSettings) -> Result:
        """The composition's results (of :attr:`result_type`), counted from ``run``'s evidence,
        with the ``κ`` it deploys; writes its files."""
        raise NotImplementedError

    def deploy(self, branch: torch.nn.Module, threat: ThreatModel, attack: Attack,
               threshold: float | None, coverage: float | None,
               calibration: torch.Tensor | None, kappa: float, form: str | None = None,
               ) -> Selector:
        """The deployed selector of ``robustgate compose`` on checkpoints (``form``: one of the
        kind's ``options``, e.g. the robustness selector's ``"cascade"``, whose stages are
        chosen on ``calibration``)."""
        raise ValueError(f"the {self.name} selector is not composed from checkpoints by "
                         "`robustgate compose`")

    @property
    def composes_checkpoints(self) -> bool:
        return type(self).deploy is not SelectorKind.deploy

    # -- the report ------------------------------------------------------------------------------

    def report_note(self, label: str, result: Any) -> str | None:
        """The report's line on a certified composition of this kind."""
        return None
