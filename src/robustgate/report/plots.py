"""The run report's plots, each returned as a base64 PNG to embed in one HTML file."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from robustgate.config import CompositionSettings, ExperimentConfig  # noqa: E402
from robustgate.evaluate.results import CurvePoint, SearchResult, SplitResults  # noqa: E402
from robustgate.registry import SELECTOR_KINDS  # noqa: E402


def png(figure: Any) -> str:
    """``figure`` as a base64 PNG; the figure is closed."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _label(ax: Any, xlabel: str, ylabel: str, heading: str, **legend: Any) -> None:
    """Axis labels, the plot's heading, a light grid and, where something is labelled, the legend
    (``legend`` its options, ``fontsize`` 7 unless given)."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(heading)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(**{"fontsize": 7, **legend})


def robust_vs_inaccuracy(metrics: SplitResults, config: ExperimentConfig) -> str:
    """Robust accuracy against robust inaccuracy, one point per robust model; models trained
    with the same loss are joined (a sweep, e.g. of the ERA weight β or the training eps)."""
    figure, ax = plt.subplots(figsize=(6.4, 4.4))
    by_loss: dict[str, list[tuple[float, float, str]]] = {}
    for name, spec in config.models.items():
        if spec.loss.name == "standard" or name not in metrics:
            continue
        values = metrics[name]
        point = (100 * values.robust_inaccuracy, 100 * values.robust_accuracy, name)
        by_loss.setdefault(spec.loss.name, []).append(point)
    for loss, points in by_loss.items():
        points.sort()
        xs, ys, names = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", linestyle="-" if len(points) > 1 else "none", label=loss)
        for x, y, name in points:
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    _label(ax, "robust inaccuracy (%)  ← better", "robust accuracy (%)  ↑ better",
           "Branch models", title="loss", fontsize=8)
    return png(figure)


def certified_curves(curves: dict[str, list[tuple[float, float, float]]]) -> str:
    """Per curve (a model, with its σ or bound method), points ``(radius, certified accuracy,
    certified robust inaccuracy)``: certified accuracy against the radius, and certified robust
    inaccuracy against certified accuracy over the radii."""
    figure, (by_radius, trade_off) = plt.subplots(1, 2, figsize=(10.4, 4.2))
    for label, points in curves.items():
        radii, certified, inaccurate = zip(*sorted(points), strict=True)
        by_radius.plot(radii, [100 * value for value in certified], marker="o", label=label)
        trade_off.plot([100 * value for value in inaccurate],
                       [100 * value for value in certified], marker="o", label=label)
    _label(by_radius, "radius", "certified accuracy (%)", "Certified accuracy against radius")
    _label(trade_off, "certified robust inaccuracy (%)  ← better", "certified accuracy (%)",
           "Over the radii")
    return png(figure)


def noise_effects(rows: list[dict[str, Any]]) -> str:
    """The effect ``Δ(σ_train, σ) − Δ(0, σ)`` against σ_train: one panel per disk gap or problem,
    one curve per σ (negative: training noise helps)."""
    panels = list(dict.fromkeys(row["panel"] for row in rows))
    figure, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.4), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for row in (r for r in rows if r["panel"] == panel):
            ax.plot(row["sigma_trains"], [100 * value for value in row["mean_effect"]],
                    marker=".", label=f"σ = {row['sigma']:g}")
        ax.axhline(0, color="grey", linewidth=0.8)
        _label(ax, "σ_train", "effect on Δ (points)", panel)
    return png(figure)


def composed_accuracies(metrics: SplitResults,
                        compositions: Sequence[CompositionSettings]) -> str:
    """Composed natural against composed robust accuracy for each composition: filled under
    the attack on the whole system, hollow as counted (the sound form, a lower bound); the core
    and the branches alone for reference."""
    figure, ax = plt.subplots(figsize=(7.2, 4.8))
    references = {name for c in compositions for name in (*c.branches, c.core)}
    for name in sorted(references):
        if name in metrics:
            values = metrics[name]
            ax.scatter(100 * values.natural_accuracy, 100 * values.robust_accuracy,
                       marker="x", color="black")
            ax.annotate(f"{name} alone", (100 * values.natural_accuracy,
                                          100 * values.robust_accuracy),
                        textcoords="offset points", xytext=(5, -10), fontsize=8)
    for index, composition in enumerate(compositions):
        values = metrics.get(composition.label)
        if values is None:
            continue
        colour = f"C{index % 10}"
        marker = SELECTOR_KINDS[composition.selector].marker
        natural = 100 * values.natural_accuracy
        adaptive = None if values.adaptive is None else values.adaptive.robust_accuracy
        if values.selection_rate is not None:
            ax.scatter(natural, 100 * values.robust_accuracy, marker=marker,
                       facecolors="none", edgecolors=colour)
        if adaptive is not None:
            ax.scatter(natural, 100 * adaptive, marker=marker, color=colour,
                       label=composition.label)
    _label(ax, "composed natural accuracy (%)", "composed robust accuracy (%)",
           "Compositions (filled: attacked end to end; hollow: counted, sound form)")
    return png(figure)


def operating_curves(
    curves: Sequence[tuple[str, dict[str, Sequence[CurvePoint]], float, float]],
) -> str:
    """Per composition with a chosen operating point: composed natural against sound robust
    accuracy over ``κ`` (validation data dashed, test data solid), the chosen ``κ`` ringed and
    the core's natural accuracy minus the allowed drop as a vertical line."""
    figure, ax = plt.subplots(figsize=(7.2, 4.8))
    for index, (label, curve, kappa, floor) in enumerate(curves):
        colour = f"C{index % 10}"
        for points, style, kind in ((curve["validation"], "--", "validation"),
                                    (curve["test"], "-", "test")):
            xs = [100 * point.natural_accuracy for point in points]
            ys = [100 * point.robust_accuracy for point in points]
            ax.plot(xs, ys, style, marker=".", color=colour, label=f"{label} ({kind})")
            for point, x, y in zip(points, xs, ys, strict=True):
                if point.kappa == kappa:
                    ax.scatter(x, y, s=120, facecolors="none", edgecolors=colour, zorder=3)
                ax.annotate(f"κ={point.kappa:g}", (x, y), textcoords="offset points",
                            xytext=(4, 3), fontsize=7, color=colour)
        ax.axvline(100 * floor, color=colour, linestyle=":", alpha=0.7)
    _label(ax, "composed natural accuracy (%)",
           "composed robust accuracy, sound form or certified (%)",
           "Operating points (ringed: chosen κ; dotted: the target on the test set)")
    return png(figure)


def risk_coverage(curves: Sequence[tuple[str, np.ndarray, np.ndarray]]) -> str:
    """Selective risk against coverage for each abstain model (a point for a selector without
    a score)."""
    figure, ax = plt.subplots(figsize=(6.4, 4.4))
    for label, coverage, risk in curves:
        if len(coverage) == 1:
            ax.scatter(100 * coverage, 100 * risk, marker="o", label=label, zorder=3)
        else:
            ax.plot(100 * coverage, 100 * risk, label=label)
    _label(ax, "coverage (%)", "selective risk (%)", "Risk–coverage")
    return png(figure)


def threshold_sweeps(sweeps: Sequence[tuple[str, np.ndarray, np.ndarray, float]]) -> str:
    """Per score-based selector: selection rate and the accuracy of the selected inputs against
    the threshold, with the chosen threshold dashed."""
    figure, axes = plt.subplots(1, len(sweeps), figsize=(4.6 * len(sweeps), 3.8), squeeze=False)
    for ax, (label, scores, accurate, chosen) in zip(axes[0], sweeps, strict=True):
        thresholds = np.unique(np.quantile(scores, np.linspace(0, 1, 201)))
        selected = scores[None, :] >= thresholds[:, None]
        rate = selected.mean(axis=1)
        correct = (selected & accurate[None, :]).sum(axis=1)
        accuracy = np.where(rate > 0, correct / np.maximum(selected.sum(axis=1), 1), np.nan)
        ax.plot(thresholds, 100 * rate, label="selection rate")
        ax.plot(thresholds, 100 * accuracy, label="accuracy on selected")
        ax.axvline(chosen, color="grey", linestyle="--")
        ax.xaxis.set_major_locator(MaxNLocator(5))
        _label(ax, "threshold", "%", label)
        ax.title.set_fontsize(9)
    return png(figure)


def search_frontier(result: SearchResult, splits: Sequence[str] = ("choose", "test")) -> str:
    """An operating point over training: composed natural against sound robust (or certified)
    accuracy of every candidate at every ``κ`` (one panel per split), the core and each branch
    alone as references, the chosen pair ringed."""
    figure, axes = plt.subplots(1, len(splits), figsize=(6.0 * len(splits), 4.6), squeeze=False)
    choice = result.choice
    picked = choice.picked
    for ax, split in zip(axes[0], splits, strict=True):
        for index, candidate in enumerate(result.candidates):
            name, colour = candidate.name, f"C{index % 10}"
            points = result.curves[split][name]
            xs = [100 * point.natural_accuracy for point in points]
            ys = [100 * point.robust_accuracy for point in points]
            ax.plot(xs, ys, "-", marker=".", color=colour, label=f"candidate {name}")
            alone = result.branches[split][name]
            ax.scatter(100 * alone["natural_accuracy"], 100 * alone["robust_accuracy"],
                       marker="x", color=colour)
            for point, x, y in zip(points, xs, ys, strict=True):
                if name == picked and point.kappa == choice.candidates[name].kappa:
                    ax.scatter(x, y, s=160, facecolors="none", edgecolors="black", zorder=3)
        core = result.core[split]
        ax.scatter(100 * core["natural_accuracy"], 100 * core["robust_accuracy"], marker="*",
                   s=120, color="black", label="core alone", zorder=3)
        floor = core["natural_accuracy"] - choice.max_accuracy_drop
        ax.axvline(100 * floor, color="grey", linestyle=":")
        _label(ax, "composed natural accuracy (%)", "sound robust or certified accuracy (%)",
               f"{split} points (×: branch alone; ringed: "
               f"{'chosen' if choice.chosen is not None else 'closest'})")
    return png(figure)
