"""What an experiment adds on two-dimensional data: the robustness-selector compositions' exact
natural and robust accuracy (``evaluate.Grid``: every eps-ball checked point by point, the
deployed selector with an exact check), and ``decision_regions.png``, a panel per model and per
composition (hatched where the selector abstains and the core answers; robust-and-inaccurate
points ringed, the compositions' as counted in the sound form and with the selection on the
clean input)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robustgate.attacks import Attack
from robustgate.compose import ComposedClassifier
from robustgate.config import CompositionSettings
from robustgate.evaluate import Grid, Records, Selection, compose_records, robustness_metrics
from robustgate.models import predict_logits
from robustgate.report.decision_regions import (
    FILE,
    RESOLUTION,
    Panel,
    plot_decision_regions,
)
from robustgate.select import RobustnessSelector
from robustgate.threat import ThreatModel

GRID_POINTS = RESOLUTION**2


def exact_compositions(grid: Grid, compositions: dict[str, tuple[CompositionSettings, float]],
                       models: dict[str, nn.Module], data: dict[str, tuple[torch.Tensor,
                                                                            torch.Tensor]]
                       ) -> dict[str, dict[str, dict[str, Any]]]:
    """``{split: {composition: metrics}}``: the exact natural and robust accuracy of every
    one-branch robustness-selector composition (by label: its settings and deployed ``κ``), on
    the grid points nearest each split's data."""
    exact: dict[str, dict[str, dict[str, Any]]] = {split: {} for split in data}
    for composition, kappa in compositions.values():
        labels = grid.composition(models[composition.branches[0]], models[composition.core],
                                  kappa)
        for split, (x, y) in data.items():
            predictions, robust = grid.robustness(labels, x)
            exact[split][composition.label] = robustness_metrics(predictions == y.numpy(),
                                                                 robust)
    return exact


def draw_decision_regions(out: Path, models: dict[str, nn.Module], records: dict[str, Records],
                          compositions: dict[str, tuple[CompositionSettings, float]],
                          x: torch.Tensor,
                          y: torch.Tensor, threat: ThreatModel, attack: Attack, split: str,
                          num_classes: int, dataset: str) -> Path:
    """The decision regions of every attacked model and of every one-branch robustness-selector
    composition (deployed with its robustness check), over ``split``'s points."""
    eps = threat.eps

    def plain(model: nn.Module):
        def predict(grid: torch.Tensor):
            return predict_logits(model, grid).argmax(dim=1).cpu().numpy(), None
        return predict

    def robust_inaccurate(part: Records) -> np.ndarray:
        return ~part.accurate & part.robust_at(eps)

    panels = {name: Panel(plain(models[name]), robust_inaccurate(part))
              for name, part in records.items()}
    for composition, kappa in compositions.values():
        branch, core = composition.branches[0], composition.core
        # the plot's whole grid in one batch: a small model, and far fewer attack steps
        deployed = ComposedClassifier(models[branch], RobustnessSelector(
            models[branch], threat, attack, kappa, batch_size=GRID_POINTS), models[core])
        answers: dict[str, Any] = {}

        def predict(grid: torch.Tensor, deployed: ComposedClassifier = deployed,
                    answers: dict[str, Any] = answers):
            """The deployed system, predicted once per grid for both of its panels."""
            if answers.get("grid") is not grid:
                labels, routes = deployed.predict(grid)
                answers.update(grid=grid, answer=(labels.numpy(),
                                                  (routes == deployed.core_route).numpy()))
            return answers["answer"]

        selections = {"": Selection.robustness(records[branch], eps, kappa)}
        selections[" (unattacked)"] = Selection.unattacked(
            records[branch], records[branch].robust_at(kappa * eps), eps)
        for suffix, selection in selections.items():
            composed = compose_records(records[branch], records[core], selection)
            panels[composition.label + suffix] = Panel(predict, robust_inaccurate(composed))
    path = out / FILE
    plot_decision_regions(panels, x.numpy(), y.numpy(), num_classes, path,
                          title=f"{dataset}, {split} points; hatched: the selector abstains "
                          "(core answers)")
    return path
