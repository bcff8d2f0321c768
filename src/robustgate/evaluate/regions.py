"""The panels of the decision-region plot of two-dimensional data (``report.decision_regions``):
every attacked model, and every one-branch robustness-selector composition deployed with its
robustness check (hatched where the selector abstains and the core answers), each with its
robust-and-inaccurate points: the compositions' as counted in the sound form and, in their
``(unattacked)`` panel, with the selection on the clean input."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from robustgate.attacks import Attack
from robustgate.compose import ComposedClassifier
from robustgate.config import CompositionSettings
from robustgate.evaluate.records import Records
from robustgate.evaluate.sound_count import Selection, compose_records
from robustgate.models import predict_logits
from robustgate.select import RobustnessSelector
from robustgate.threat import ThreatModel


@dataclass
class Panel:
    """One classifier to draw: ``predict(grid) -> (labels, abstained)`` (``abstained`` may be
    ``None``), and the per-point indicator of robust inaccuracy on the shown data."""

    predict: Callable[[torch.Tensor], tuple[np.ndarray, np.ndarray | None]]
    robust_inaccurate: np.ndarray


def region_panels(models: dict[str, nn.Module], records: dict[str, Records],
                  compositions: dict[str, tuple[CompositionSettings, float]],
                  threat: ThreatModel, attack: Attack, grid_points: int) -> dict[str, Panel]:
    """A panel per attacked model (its ``records`` on the shown points) and per one-branch
    robustness-selector composition of ``compositions`` (by label: its settings and deployed
    ``κ``); a deployed selector checks a plot's ``grid_points`` points in one batch."""
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
        selections = {"": Selection.robustness(records[branch], eps, kappa)}
        selections[" (unattacked)"] = Selection.unattacked(
            records[branch], records[branch].robust_at(kappa * eps), eps)
        ringed = {suffix: robust_inaccurate(compose_records(records[branch], records[core],
                                                            selection))
                  for suffix, selection in selections.items()}
        # the plot's whole grid in one batch: a small model, and far fewer attack steps
        deployed = ComposedClassifier(models[branch], RobustnessSelector(
            models[branch], threat, attack, kappa, batch_size=grid_points), models[core])
        answers: dict[str, Any] = {}

        def predict(grid: torch.Tensor, deployed: ComposedClassifier = deployed,
                    answers: dict[str, Any] = answers):
            """The deployed system, predicted once per grid for both of its panels."""
            if answers.get("grid") is not grid:
                labels, routes = deployed.predict(grid)
                answers.update(grid=grid, answer=(labels.numpy(),
                                                  (routes == deployed.core_route).numpy()))
            return answers["answer"]

        for suffix, marked in ringed.items():
            panels[composition.label + suffix] = Panel(predict, marked)
    return panels
