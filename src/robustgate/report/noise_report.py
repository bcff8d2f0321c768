"""The noise study's report: ``report.md`` and ``report.html`` with, per problem, the effect of
training noise against σ_train (one curve per σ, one panel per disk gap or problem) and a summary
table per problem and σ."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robustgate.config import NoiseStudyConfig
from robustgate.io import atomic_write_text
from robustgate.report import plots
from robustgate.report.run_report import Section, markdown, to_html

DESCRIPTIONS = {
    "disks": "The class-1 region is a union of disks; training at σ_train is the Bayes-optimal "
             "classifier of the σ_train-noisy data (the Gaussian-filtered indicator thresholded "
             "at 1/2), smoothing at σ thresholds its σ-filtered output; Δ is the fraction of "
             "pixels it gets wrong, the spread taken across random disk layouts (noise in "
             "pixels).",
    "gaussians": "MLPs trained by the library at each σ_train and smoothed by a majority vote. "
                 "equal: two isotropic Gaussians of one covariance and equal priors; the Bayes "
                 "rule of the noisy data is the same hyperplane at every σ_train, so training "
                 "noise can neither help nor hurt the Bayes rule, and Δ should not move beyond "
                 "the sampling error. clusters: each class a row of small clusters packed closer "
                 "than σ; the smoothed data's Bayes rule changes with σ_train, which may help.",
    "mnist": "Small CNNs trained with noise at σ_train, Δ by a majority vote of noisy copies; "
             "certified accuracy at one L2 radius by certify on a subset.",
}


def _p(value: float | None) -> str:
    """A p-value (cells of an earlier release have none)."""
    return "–" if value is None else f"{value:.3g}"


def _table(rows: list[dict[str, Any]]) -> Section:
    columns = ["problem", "σ", "Δ at σ_train = 0", "Δ at σ_train = σ", "best σ_train",
               "best σ_train / σ", "Δ at best", "p (helped)", "p (σ_train = σ hurt)",
               "training noise"]
    table = []
    for row in rows:
        verdict = row["verdict"]
        if row["sigma_train_equal_sigma_hurt"] and verdict != "hurt":
            verdict += "; σ_train = σ hurt"
        table.append([row["panel"], f"{row['sigma']:g}", f"{100 * row['error_at_zero']:.2f}%",
                      f"{100 * row['error_at_sigma']:.2f}% (at {row['sigma_train_at_sigma']:g})",
                      f"{row['best_sigma_train']:g}", f"{row['best_ratio']:.2f}",
                      f"{100 * row['error_at_best']:.2f}%", _p(row.get("p_helped")),
                      _p(row.get("p_hurt")), verdict])
    return Section("", columns, table)


def recommendation(summaries: dict[str, list[dict[str, Any]]]) -> str:
    """The advice the measurements imply for a user choosing σ_train for a smoothing σ."""
    ratios = [row["best_ratio"] for problem in ("mnist", "gaussians") if problem in summaries
              for row in summaries[problem] if row["verdict"] == "helped"]
    never = [row for row in summaries.get("disks", []) if row["verdict"] != "helped"]
    parts = ["Do not assume training at the smoothing σ is best, nor that noise always helps."]
    if ratios:
        advice = ("train a little below σ (or tune σ_train on validation data) rather than at "
                  "σ" if max(ratios) < 1 else "tune σ_train on validation data around σ rather "
                  "than fixing it at σ")
        parts.append(f"Where training noise helped a trained model, the best σ_train was "
                     f"{min(ratios):.2f}–{max(ratios):.2f}·σ: {advice}.")
    if never:
        parts.append(f"On {len(never)} of {len(summaries['disks'])} disk settings training noise "
                     "did not help beyond the spread across layouts, and σ_train = σ hurt on "
                     f"{sum(row['sigma_train_equal_sigma_hurt'] for row in never)} of them: "
                     "where the class regions are well separated at the scale of σ, train with "
                     "little noise or none.")
    return " ".join(parts)


def write_noise_report(out: Path, config: NoiseStudyConfig, summary: dict[str, Any]
                       ) -> tuple[Path, Path]:
    sections = []
    summaries = summary["summaries"]
    for problem, rows in summaries.items():
        section = _table(rows)
        section.title = f"{problem}"
        section.notes = [DESCRIPTIONS[problem], "Δ is the error of the majority vote (ties and "
                         "abstentions count as errors). 'helped': the best σ_train beats "
                         "σ_train = 0 beyond the sampling error (p < 0.05, one-sided: a t-test "
                         "across layouts for disks, the exact McNemar test on the same test "
                         "points otherwise; the best σ_train is picked on the same points, so "
                         "this p-value is optimistic); 'hurt': σ_train = σ is worse than 0 "
                         "beyond it (the same one-sided tests, the direction asked in advance) "
                         "and no σ_train is better on average."]
        section.figure = plots.noise_effects(rows)
        section.notes += [
            f"Certified accuracy at L2 radius {config.mnist.radius:g} (certify, N = "
            f"{config.mnist.n:,}, α = {config.mnist.alpha:g}, the first "
            f"{config.mnist.certify_limit} test images) at σ = {row['sigma']:g}, by σ_train: "
            + ", ".join(
                f"{100 * value:.1f}% ({train})" for train, value in
                row["certified_accuracy"].items()) + "."
            for row in rows if row.get("certified_accuracy")]
        sections.append(section)
    sections.append(Section("Recommendation", notes=[
        recommendation(summaries), f"The last run took {summary['wall_time_s']:.0f} s (cells "
        "computed by earlier runs in this directory were read back)."]))
    paths = (out / "report.md", out / "report.html")
    text = markdown(config.name, sections)
    text += "\n## Recommendation\n\n" + "\n".join(sections[-1].notes) + "\n"
    atomic_write_text(paths[0], text)
    atomic_write_text(paths[1], to_html(config.name, sections))
    return paths
