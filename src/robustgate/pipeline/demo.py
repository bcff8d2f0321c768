"""The demo: standard, TRADES and ERA on a 2-D data set, evaluated, composed and reported.

A run directory holds ``config.json`` (the resolved config), ``models/*.safetensors``,
``records/<split>/<model>.csv``, ``metrics.json``, ``report.md`` and ``decision_regions.png``.
A run interrupted midway resumes from the models and records already written, as long as the
config is the same; a different config in an existing run directory is an error, so nothing
written is lost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from robustgate.attacks import PGD
from robustgate.compose import ComposedClassifier
from robustgate.config import DemoConfig
from robustgate.data import make_synthetic
from robustgate.device import resolve_device
from robustgate.evaluate import (
    Grid,
    Records,
    Selection,
    compose_records,
    evaluate_model,
    robustness_metrics,
    selection_metrics,
)
from robustgate.io import atomic_write_json, atomic_write_text
from robustgate.losses import make_loss, training_attack
from robustgate.models import MLP, load_checkpoint, predict_logits, save_checkpoint
from robustgate.pipeline.run_directory import check_run_directory, say
from robustgate.report import metrics_table
from robustgate.report.decision_regions import Panel, plot_decision_regions
from robustgate.select import RobustnessSelector
from robustgate.train import fit

MODELS = ("standard", "trades", "era")
BRANCH, CORE = "era", "standard"
SPLITS = ("train", "test")
# the one deployed composition counted two ways (DESIGN.md section 1), and computed exactly
SOUND, UNATTACKED, EXACT = "composed", "composed (unattacked)", "composed (exact)"
COMPOSITIONS = (SOUND, UNATTACKED, EXACT)
# the exact computation's grid spacing over the unit square
GRID_STEP = 0.001


def _losses(config: DemoConfig) -> dict[str, Any]:
    def attack(objective: str) -> PGD:
        return training_attack(
            objective, config.train_attack_steps, config.train_attack_relative_step
        )

    return {
        "standard": make_loss("standard"),
        "trades": make_loss(
            "trades", config.threat, beta_trades=config.beta_trades, attack=attack("kl")
        ),
        "era": make_loss(
            "era", config.threat, beta=config.era_beta, beta_trades=config.beta_trades,
            weight=config.era_weight, attack=attack("ce"),
        ),
    }


def _train_or_load(
    name: str, config: DemoConfig, loss: Any, x: torch.Tensor, y: torch.Tensor,
    num_classes: int, out: Path, device: torch.device, progress: bool,
) -> nn.Module:
    path = out / "models" / f"{name}.safetensors"
    if path.exists():
        model, _ = load_checkpoint(path, device)
        say(f"[{name}] loaded {path}", progress)
        return model
    arguments = {
        "in_features": x.shape[1], "num_classes": num_classes, "hidden": list(config.hidden)
    }
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        model = MLP(**arguments).to(device)
    say(f"[{name}] training {config.train.epochs} epochs", progress)
    history = fit(model, loss, x, y, config.train, progress=progress, description=name)
    save_checkpoint(path, model, "MLP", arguments, {"loss": name, "history": history})
    return model


def _evaluate_or_load(
    name: str, split: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
    config: DemoConfig, attack: PGD, out: Path, progress: bool,
) -> Records:
    path = out / "records" / split / f"{name}.csv"
    if path.exists():
        return Records.read_csv(path)
    records = evaluate_model(
        model, x, y, config.threat, [config.eps, 2 * config.eps], attack,
        progress=progress, description=f"{name}/{split}",
    )
    records.to_csv(path)
    return records


def selections(branch: Records, eps: float) -> dict[str, Selection]:
    """The robustness selector deployed at eps, counted in the sound form and, beside it, with
    its decision taken on the clean input."""
    return {SOUND: Selection.robustness(branch, eps),
            UNATTACKED: Selection.unattacked(branch, branch.robust_at(eps), eps)}


def composition_metrics(branch: Records, core: Records, selection: Selection) -> dict[str, Any]:
    """Metrics of ``(branch, selector, core)``, with the selection rate, the branch's accuracy on
    the selected inputs and the share of stable selections."""
    composed = compose_records(branch, core, selection)
    stable = selection.stable
    return {
        **robustness_metrics(composed.accurate, composed.robust_at(selection.eps)),
        **selection_metrics(branch.accurate, selection.selected),
        "stable_rate": float(stable.mean()),
        "core_robust_on_stable": float(core.robust_at(selection.eps)[stable].mean())
        if stable.any() else None,
    }


def split_metrics(records: dict[str, Records], eps: float) -> dict[str, dict[str, Any]]:
    """Metrics of every model and of the composition in both counts."""
    metrics: dict[str, dict[str, Any]] = {
        name: robustness_metrics(r.accurate, r.robust_at(eps)) for name, r in records.items()
    }
    for label, selection in selections(records[BRANCH], eps).items():
        metrics[label] = composition_metrics(records[BRANCH], records[CORE], selection)
    return metrics


def exact_metrics(grid: Grid, composed_labels: np.ndarray, x: torch.Tensor, y: torch.Tensor
                  ) -> dict[str, float]:
    """The deployed composition's exact natural and robust accuracy (``evaluate.grid``)."""
    predictions, robust = grid.robustness(composed_labels, x)
    return robustness_metrics(predictions == y.numpy(), robust)


def _explanation(metrics: dict[str, dict[str, Any]], config: DemoConfig) -> str:
    sound, unattacked, exact = metrics[SOUND], metrics[UNATTACKED], metrics[EXACT]
    core, branch = metrics[CORE], metrics[BRANCH]
    share = sound["core_robust_on_stable"]
    share_text = "–" if share is None else f"{100 * share:.1f}%"
    return (
        f"`{SOUND}`, `{UNATTACKED}` and `{EXACT}` are one deployed system: ERA answers where it "
        f"is robust at eps = {config.eps:g} around the input it sees "
        f"({100 * sound['selection_rate']:.1f}% of the inputs), the standard model elsewhere; "
        f"natural accuracy {100 * sound['natural_accuracy']:.1f}% (standard alone: "
        f"{100 * core['natural_accuracy']:.1f}% / {100 * core['robust_accuracy']:.1f}% natural / "
        f"robust; ERA alone: {100 * branch['natural_accuracy']:.1f}% / "
        f"{100 * branch['robust_accuracy']:.1f}%).\n\n"
        f"`{EXACT}` is the truth: the deployed system with an exact robustness check, computed on "
        f"a grid of spacing {GRID_STEP:g} over the domain (every eps-ball checked point by "
        f"point): {100 * exact['robust_accuracy']:.1f}% robust accuracy.\n\n"
        f"`{SOUND}` is the robust accuracy counted from the per-sample records (DESIGN.md section "
        f"1): an input counts where ERA is right on it and either its selection is stable (ERA "
        f"robust on B(x, 2·eps), which contains B(x', eps) for every x' the adversary reaches: "
        f"{100 * sound['stable_rate']:.1f}% of the inputs) or the standard model is robust and "
        f"right. It gives {100 * sound['robust_accuracy']:.1f}%, a lower bound on the exact "
        f"figure as far as the attack behind the records is exact. ERA is robust at "
        f"2·eps = {2 * config.eps:g} only on inputs far from every class boundary, where the "
        f"standard model is robust at eps as well ({share_text} of them), so the count gains "
        f"little over the standard model here.\n\n"
        f"`{UNATTACKED}` takes the selector's decision on the clean input (the paper's Figure 1): "
        f"{100 * unattacked['robust_accuracy']:.1f}%. An adversary who moves x by eps also moves "
        f"the selector's decision, so that figure is not a robust accuracy.\n"
    )


def _decision_region_panels(
    models: dict[str, nn.Module], records: dict[str, Records], config: DemoConfig, attack: PGD
) -> dict[str, Panel]:
    def plain(model: nn.Module):
        def predict(grid: torch.Tensor):
            return predict_logits(model, grid).argmax(dim=1).cpu().numpy(), None
        return predict

    deployed = ComposedClassifier(
        models[BRANCH], RobustnessSelector(models[BRANCH], config.threat, attack), models[CORE])
    last: dict[str, Any] = {}

    def composition(grid: torch.Tensor):
        """The deployed system, the same for both compositions: predicted once per grid."""
        if last.get("grid") is not grid:
            labels, routes = deployed.predict(grid)
            last.update(grid=grid, answer=(labels.numpy(), (routes == deployed.core_route).numpy()))
        return last["answer"]

    def robust_inaccurate(r: Records) -> np.ndarray:
        return ~r.accurate & r.robust_at(config.eps)

    panels = {name: Panel(plain(models[name]), robust_inaccurate(records[name])) for name in MODELS}
    for label, selection in selections(records[BRANCH], config.eps).items():
        composed = compose_records(records[BRANCH], records[CORE], selection)
        panels[label] = Panel(composition, robust_inaccurate(composed))
    return panels


def run_demo(
    config: DemoConfig, out: str | Path, device: str | torch.device = "auto", progress: bool = True
) -> dict[str, dict[str, dict[str, Any]]]:
    """Run the demo into ``out``; returns ``{split: {model: metrics}}`` (also ``metrics.json``)."""
    out = Path(out)
    device = resolve_device(device)
    # the data and losses first: a bad data set or ERA weight is refused before anything is written
    data = {
        split: make_synthetic(config.dataset, n, config.seed, split)
        for split, n in (("train", config.n_train), ("test", config.n_test))
    }
    num_classes = data["train"][2]
    losses = _losses(config)
    check_run_directory(out, config.to_dict())
    models = {
        name: _train_or_load(name, config, losses[name], *data["train"][:2], num_classes, out,
                             device, progress)
        for name in MODELS
    }
    attack = PGD(
        steps=config.eval_attack_steps, relative_step=config.eval_attack_relative_step,
        restarts=config.eval_attack_restarts, early_exit=True, seed=config.seed,
        objective="margin", target_classes=num_classes - 1,
    )
    say("evaluating: PGD at eps and 2·eps on the train and test points", progress)
    records = {
        split: {
            name: _evaluate_or_load(name, split, models[name], *data[split][:2], config, attack,
                                    out, progress)
            for name in MODELS
        }
        for split in SPLITS
    }
    metrics = {split: split_metrics(records[split], config.eps) for split in SPLITS}
    grid = Grid(config.threat, GRID_STEP)
    composed_labels = grid.composition(models[BRANCH], models[CORE])
    for split in SPLITS:
        metrics[split][EXACT] = exact_metrics(grid, composed_labels, *data[split][:2])
    atomic_write_json(out / "metrics.json", metrics)

    report = [
        f"# robustgate demo: `{config.dataset}`, {config.norm} eps = {config.eps:g}, "
        f"seed {config.seed}\n",
        "Robust accuracy = accurate and robust; robust inaccuracy = robust but wrong; "
        "non-robust = an attack changed the prediction (PGD on the logit margin, then towards "
        f"every other class, {config.eval_attack_steps} steps, {config.eval_attack_restarts} "
        "restarts). "
        "The three partition the data. For the compositions, the selection rate is the share of "
        "inputs ERA answers, and the accuracy on selected is ERA's accuracy there.\n",
    ]
    for split in SPLITS:
        report += [f"## {split} points\n", metrics_table(metrics[split]), ""]
    report += ["## How the composition is counted (test points)\n",
               _explanation(metrics["test"], config),
               "![decision regions](decision_regions.png)\n"]
    atomic_write_text(out / "report.md", "\n".join(report))

    say("plotting decision regions", progress)
    x_train, y_train, _ = data["train"]
    plot_decision_regions(
        _decision_region_panels(models, records["train"], config, attack),
        x_train.numpy(), y_train.numpy(), num_classes, out / "decision_regions.png",
        title=f"{config.dataset}, training points; hatched: the selector abstains (core answers)",
    )
    return metrics
