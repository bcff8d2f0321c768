"""When does noise-augmented training help a smoothed classifier? The study of Pal & Sulam
("Understanding Noise-Augmented Training for Randomized Smoothing", TMLR 2023) as a resumable
experiment.

Notation: ``σ_train`` the training noise, ``σ`` the smoothing noise, ``Δ(σ_train, σ)`` the error of
the σ-smoothed classifier of a base classifier trained at ``σ_train``, and the effect
``Δ(σ_train, σ) − Δ(0, σ)`` (negative: training noise helps).

- ``disks``: the authors' synthetic problem, computed as they do. The class-1 region ``h`` is a
  union of disks; training at ``σ_train`` is idealized as the Bayes-optimal classifier of the
  noisy data, ``φ(h ∗ N_σtrain)`` (the Gaussian-filtered indicator thresholded at 1/2), and
  smoothing at ``σ`` thresholds its σ-filtered output: ``Δ = P[φ(φ(h ∗ N_σtrain) ∗ N_σ) ≠ h]`` over
  the pixels. Filtering is ``scipy.ndimage.gaussian_filter`` with zero padding.
- ``gaussians``: base models trained by the library (``gaussian`` loss; ``standard`` at
  ``σ_train = 0``) and smoothed by a majority vote, on two problems: ``equal`` (two isotropic
  Gaussians of one covariance, equal priors: the Bayes rule of the noisy data is the same
  hyperplane at every ``σ_train``, so Δ should not depend on it) and ``clusters`` (each class a row
  of small clusters packed closer than σ, where it may).
- ``mnist``: small CNNs trained with the ``gaussian`` loss, Δ by a majority vote of noisy copies,
  and certified accuracy at one radius by ``certify``.

Δ is the error of the majority vote: ties count as errors. The run directory holds
``config.json``, ``results/<problem>.json`` (rewritten after every cell, so an interrupted study
resumes), trained models under ``models/``, and ``report.md`` / ``report.html``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from scipy.optimize import brentq
from scipy.stats import chi2, ncx2, ttest_1samp

from robustgate.certify import Smooth
from robustgate.config import (
    GaussiansSettings,
    MnistNoiseSettings,
    NoiseStudyConfig,
    OptimizerSettings,
)
from robustgate.data import load_dataset
from robustgate.evaluate import certify_smoothed
from robustgate.evaluate.statistics import mcnemar_p_value
from robustgate.io import atomic_write_json, say
from robustgate.losses import make_loss
from robustgate.models import build_model, load_checkpoint, save_checkpoint
from robustgate.report.noise_report import write_noise_report
from robustgate.run_directory import check_run_directory
from robustgate.train import fit

# -- disks ---------------------------------------------------------------------------------------


def disk_layout(size: int, radius: float, gap: float, tries: int,
                rng: np.random.Generator) -> np.ndarray:
    """The class-1 region: disks of ``radius`` pixels whose centres, drawn uniformly ``tries``
    times, are kept where no kept centre lies within the ``(2·radius + gap)`` square around them
    (so kept disks are at least ``gap`` apart)."""
    centres: list[np.ndarray] = []
    reach = 2 * radius + gap
    for centre in rng.uniform(0, size, size=(tries, 2)):
        if all(np.abs(centre - kept).max() >= reach for kept in centres):
            centres.append(centre)
    rows, columns = np.mgrid[0:size, 0:size] + 0.5
    region = np.zeros((size, size), dtype=bool)
    for row, column in centres:
        region |= (rows - row) ** 2 + (columns - column) ** 2 <= radius**2
    return region


def smoothed(region: np.ndarray, sigma: float) -> np.ndarray:
    """``φ(region ∗ N_σ)``: the Gaussian-filtered indicator (zero padding) thresholded at 1/2;
    the region itself at ``σ = 0``."""
    if sigma == 0:
        return region
    return gaussian_filter(region.astype(np.float64), sigma, mode="constant", cval=0.0) > 0.5


def disk_error(region: np.ndarray, sigma_train: float, sigma: float) -> float:
    """``Δ(σ_train, σ)``: the fraction of pixels where the σ-smoothed Bayes classifier of the
    σ_train-noisy data disagrees with the region."""
    return float((smoothed(smoothed(region, sigma_train), sigma) != region).mean())


def _run_disks(config: NoiseStudyConfig, results: dict[str, Any],
               save: Callable[[], None], progress: bool) -> None:
    settings = config.disks
    for gap in settings.gaps:
        for layout in range(settings.layouts):
            key = f"gap={gap:g} layout={layout}"
            if key in results:
                continue
            rng = np.random.default_rng([config.seed, int(gap * 1000), layout])
            region = disk_layout(settings.size, settings.radius, gap, settings.tries, rng)
            results[key] = {"gap": gap, "layout": layout, "errors": {
                f"{sigma:g}": {f"{train:g}": disk_error(region, train, sigma)
                               for train in settings.sigma_trains}
                for sigma in settings.sigmas}}
            save()
        say(f"[disks] gap {gap:g} done", progress)


def _disks_summary(config: NoiseStudyConfig, results: dict[str, Any]) -> list[dict[str, Any]]:
    settings = config.disks
    rows = []
    for gap in settings.gaps:
        cells = [cell for cell in results.values() if cell["gap"] == gap]
        for sigma in settings.sigmas:
            errors = np.array([[cell["errors"][f"{sigma:g}"][f"{train:g}"]
                                for train in settings.sigma_trains] for cell in cells])
            rows.append(_verdict_by_layouts(f"gap {gap:g}", sigma, settings.sigma_trains, errors))
    return rows


def _verdict_by_layouts(panel: str, sigma: float, sigma_trains: list[float], errors: np.ndarray
                        ) -> dict[str, Any]:
    """Help, harm or neither beyond the spread across layouts (``errors``: layouts × σ_train):
    one-sided t-tests of the per-layout effect at the best σ_train and at σ_train = σ."""
    zero = sigma_trains.index(0.0)
    effects = errors - errors[:, [zero]]
    mean = effects.mean(axis=0)
    best = int(np.argmin(mean))
    at_sigma = int(np.argmin([abs(train - sigma) for train in sigma_trains]))

    def p_value(values: np.ndarray, alternative: str) -> float:
        if values.std() == 0:
            return 1.0
        return float(ttest_1samp(values, 0.0, alternative=alternative).pvalue)

    p_helped = 1.0 if best == zero else p_value(effects[:, best], "less")
    p_hurt = p_value(effects[:, at_sigma], "greater")
    helped = best != zero and mean[best] < 0 and p_helped < 0.05
    hurt_at_sigma = p_hurt < 0.05
    verdict = ("helped" if helped else "hurt" if hurt_at_sigma and mean.min() >= 0
               else "no difference")
    return {"panel": panel, "sigma": sigma, "sigma_trains": list(sigma_trains),
            "mean_error": errors.mean(axis=0).tolist(), "mean_effect": mean.tolist(),
            "effect_spread": effects.std(axis=0).tolist(),
            "error_at_zero": float(errors[:, zero].mean()),
            "error_at_sigma": float(errors[:, at_sigma].mean()),
            "sigma_train_at_sigma": sigma_trains[at_sigma],
            "best_sigma_train": sigma_trains[best], "best_ratio": sigma_trains[best] / sigma,
            "error_at_best": float(errors[:, best].mean()),
            "verdict": verdict, "sigma_train_equal_sigma_hurt": hurt_at_sigma,
            "p_helped": p_helped, "p_hurt": p_hurt}


# -- trained problems: gaussians and mnist ---------------------------------------------------


def gaussian_problem(name: str, n: int, settings: GaussiansSettings, rng: np.random.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``equal``: classes ``N((0.4, 0.5), 0.08²I)`` and ``N((0.6, 0.5), 0.08²I)``, equal priors.
    ``clusters``: class 1 four small clusters (std 0.01) along ``y = 0.5``, ``spacing`` apart
    (closer than the smoothing noise); class 0 uniform over the square farther than 0.04 from
    every cluster centre; equal priors. Clipped to the unit square."""
    labels = rng.integers(0, 2, size=n)
    if name == "equal":
        centres = np.stack([np.where(labels == 0, 0.4, 0.6), np.full(n, 0.5)], axis=1)
        points = centres + rng.normal(0, 0.08, size=(n, 2))
    else:
        centres = np.stack([0.5 + settings.spacing * (np.arange(4) - 1.5), np.full(4, 0.5)],
                           axis=1)
        points = centres[rng.integers(0, 4, size=n)] + rng.normal(0, 0.01, size=(n, 2))
        background = rng.uniform(0, 1, size=(20 * n, 2))
        far = (np.linalg.norm(background[:, None] - centres[None], axis=2) > 0.04).all(axis=1)
        points[labels == 0] = background[far][: int((labels == 0).sum())]
    return (torch.from_numpy(np.clip(points, 0, 1)).float(),
            torch.from_numpy(labels).long())


def vote_correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, sigma: float,
                 votes: int, seed: int, num_classes: int) -> np.ndarray:
    """Per input, whether the majority vote of ``votes`` σ-noisy copies is right (a tie is an
    error)."""
    counts = Smooth(model, num_classes, sigma, batch_size=2000).counts(x, votes, seed).cpu()
    top = counts.topk(2, dim=1)
    untied = top.values[:, 0] > top.values[:, 1]
    return (untied & (top.indices[:, 0] == y)).numpy()


def _trained(path: Path, architecture: str, arguments: dict[str, Any], x: torch.Tensor,
             y: torch.Tensor, sigma_train: float, train: OptimizerSettings, seed: int,
             progress: bool) -> torch.nn.Module:
    """The base model trained at ``sigma_train`` (``standard`` at 0), or the one saved at
    ``path``."""
    if path.exists():
        return load_checkpoint(path)[0]
    torch.manual_seed(seed)
    model = build_model(architecture, arguments)
    loss = (make_loss("standard") if sigma_train == 0
            else make_loss("gaussian", sigma_train=sigma_train))
    fit(model, loss, x, y, train.build(seed), progress=progress, description=path.stem)
    save_checkpoint(path, model, architecture, arguments, {"sigma_train": sigma_train})
    return model


def _run_gaussians(config: NoiseStudyConfig, out: Path, results: dict[str, Any],
                   save: Callable[[], None], progress: bool) -> None:
    settings = config.gaussians
    for problem in ("equal", "clusters"):
        rng = np.random.default_rng([config.seed, 0 if problem == "equal" else 1])
        x_train, y_train = gaussian_problem(problem, settings.n_train, settings, rng)
        x_test, y_test = gaussian_problem(problem, settings.n_test, settings, rng)
        arguments = {"in_features": 2, "num_classes": 2, "hidden": list(settings.hidden)}
        for sigma in settings.sigmas:
            for ratio in settings.ratios:
                key = f"{problem} sigma={sigma:g} ratio={ratio:g}"
                if key in results:
                    continue
                sigma_train = ratio * sigma
                model = _trained(out / "models" / "gaussians" / f"{problem}-{sigma_train:g}"
                                 ".safetensors", "MLP", arguments,
                                 x_train, y_train, sigma_train, settings.train, config.seed,
                                 progress)
                correct = vote_correct(model, x_test, y_test, sigma, settings.votes,
                                       config.seed, 2)
                results[key] = {"problem": problem, "sigma": sigma, "sigma_train": sigma_train,
                                "error": float(1 - correct.mean()),
                                "correct": correct.astype(int).tolist()}
                save()
        say(f"[gaussians] {problem} done", progress)


def _run_mnist(config: NoiseStudyConfig, out: Path, results: dict[str, Any],
               save: Callable[[], None], progress: bool) -> None:
    settings: MnistNoiseSettings = config.mnist
    train = load_dataset("mnist", root=settings.root, split="train", seed=config.seed)
    test = load_dataset("mnist", root=settings.root, split="test", seed=config.seed)
    x_test, y_test = test.x[: settings.limit], test.y[: settings.limit]
    arguments = {"channels": [16, 32], "hidden": 100, "num_classes": 10}
    for sigma in settings.sigmas:
        for ratio in settings.ratios:
            key = f"mnist sigma={sigma:g} ratio={ratio:g}"
            if key in results:
                continue
            sigma_train = round(ratio * sigma, 6)
            model = _trained(out / "models" / "mnist" / f"sigma_train-{sigma_train:g}"
                             ".safetensors", "SmallCNN", arguments, train.x, train.y,
                             sigma_train, settings.train, config.seed, progress)
            correct = vote_correct(model, x_test, y_test, sigma, settings.votes, config.seed, 10)
            smooth = Smooth(model, 10, sigma, batch_size=400)
            count = settings.certify_limit
            # certified in chunks, each written to a partial file: an interrupted cell resumes;
            # once the cell is in the results, its certificates file goes
            path = (out / "certificates" / "mnist"
                    / f"sigma-{sigma:g}-sigma_train-{sigma_train:g}.csv")
            certificates = certify_smoothed(smooth, x_test[:count], y_test[:count], 100,
                                            settings.n, settings.alpha, seed=config.seed,
                                            chunk=20, path=path, progress=progress,
                                            description=f"certify {key}")
            certified = ((certificates.predictions == certificates.labels)
                         & (certificates.radii >= settings.radius))
            results[key] = {"problem": "mnist", "sigma": sigma, "sigma_train": sigma_train,
                            "error": float(1 - correct.mean()),
                            "correct": correct.astype(int).tolist(),
                            "certified_accuracy": float(certified.mean())}
            save()
            path.unlink(missing_ok=True)
            say(f"[mnist] sigma {sigma:g}, sigma_train {sigma_train:g}: error "
                f"{100 * (1 - correct.mean()):.2f}%", progress)


def _trained_summary(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Per problem and σ: Δ at every σ_train, and help or harm beyond the sampling error (exact
    McNemar tests on the same test points, at the best σ_train and at σ_train = σ)."""
    rows = []
    groups: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for cell in results.values():
        groups.setdefault((cell["problem"], cell["sigma"]), []).append(cell)
    for (problem, sigma), cells in groups.items():
        cells.sort(key=lambda cell: cell["sigma_train"])
        zero = next(cell for cell in cells if cell["sigma_train"] == 0)
        best = min(cells, key=lambda cell: (cell["error"], cell["sigma_train"]))
        at_sigma = min(cells, key=lambda cell: abs(cell["sigma_train"] - sigma))

        def p_lower(first: dict[str, Any], second: dict[str, Any]) -> float:
            """One-sided exact McNemar: the first is right less often than the second."""
            a, b = np.array(first["correct"], bool), np.array(second["correct"], bool)
            return mcnemar_p_value(int((~a & b).sum()), int((a & ~b).sum()), "greater")

        p_helped = 1.0 if best is zero else p_lower(zero, best)
        p_hurt = p_lower(at_sigma, zero)
        helped, hurt = best is not zero and p_helped < 0.05, p_hurt < 0.05
        rows.append({
            "panel": problem, "sigma": sigma,
            "sigma_trains": [cell["sigma_train"] for cell in cells],
            "mean_error": [cell["error"] for cell in cells],
            "mean_effect": [cell["error"] - zero["error"] for cell in cells],
            "error_at_zero": zero["error"], "error_at_sigma": at_sigma["error"],
            "sigma_train_at_sigma": at_sigma["sigma_train"],
            "best_sigma_train": best["sigma_train"], "best_ratio": best["sigma_train"] / sigma,
            "error_at_best": best["error"], "samples": len(zero["correct"]),
            "certified_accuracy": {f"{cell['sigma_train']:g}": cell["certified_accuracy"]
                                   for cell in cells if "certified_accuracy" in cell} or None,
            "verdict": "helped" if helped else ("hurt" if hurt and best is zero
                                                else "no difference"),
            "sigma_train_equal_sigma_hurt": hurt, "p_helped": p_helped, "p_hurt": p_hurt})
    return rows


TRAINED = {"gaussians": _run_gaussians, "mnist": _run_mnist}


def run_noise_study(config: NoiseStudyConfig, out: str | Path, progress: bool = True
                    ) -> dict[str, Any]:
    """Run (or resume) the study's problems into ``out``; returns the summaries per problem of
    every problem studied there (a rerun with other problems adds them to the study)."""
    out = Path(out)
    recorded = check_run_directory(out, json.loads(config.model_dump_json()), NoiseStudyConfig,
                                   extends="problems")
    started = time.perf_counter()
    summaries = {}
    for problem in recorded["problems"]:
        path = out / "results" / f"{problem}.json"
        results = json.loads(path.read_text()) if path.exists() else {}
        if problem in config.problems:

            def save(results: dict[str, Any] = results, path: Path = path) -> None:
                atomic_write_json(path, results)

            say(f"[{problem}] {len(results)} cells done before", progress and bool(results))
            if problem == "disks":
                _run_disks(config, results, save, progress)
            else:
                TRAINED[problem](config, out, results, save, progress)
        if results:
            summaries[problem] = (_disks_summary(config, results) if problem == "disks"
                                  else _trained_summary(results))
    summary = {"summaries": summaries, "wall_time_s": round(time.perf_counter() - started, 1)}
    atomic_write_json(out / "summary.json", summary)
    write_noise_report(out, config, summary)
    return summary


def disk_radius_after_filtering(radius: float, sigma: float) -> float:
    """The radius of ``φ(disk ∗ N_σ)`` for one disk: ``d`` with
    ``P(χ'²₂(nc = (d/σ)²) ≤ (radius/σ)²) = 1/2``; 0 where the disk vanishes
    (``radius < σ·√(2 ln 2)``)."""
    threshold = (radius / sigma) ** 2

    def inside(d: float) -> float:
        if d == 0:
            return float(chi2.cdf(threshold, 2)) - 0.5
        return float(ncx2.cdf(threshold, 2, (d / sigma) ** 2)) - 0.5

    if inside(0.0) <= 0:
        return 0.0
    return float(brentq(inside, 0.0, radius + 10 * sigma))


