"""The report of an experiment's run directory: ``report.md`` (tables) and ``report.html`` (one
file, the same tables and the plots embedded).

It reads what the run wrote: ``config.json``, ``metrics.json``, ``records/test/<model>.csv``,
``records/composed/<composition>.csv`` (indicator form), ``records/adaptive/<composition>.csv``
and ``selection/<composition>.csv`` (scores and routes).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robustgate.config import CompositionSettings, ExperimentConfig, parse_config
from robustgate.evaluate import Records, risk_coverage_curve
from robustgate.io import atomic_write_text, file_name
from robustgate.report import plots


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


@dataclass
class Section:
    title: str
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figure: str | None = None  # a PNG, base64; HTML only


@dataclass
class Run:
    """What a run directory holds, read once."""

    directory: Path
    config: ExperimentConfig
    result: dict[str, Any]
    read_records: dict[tuple[str, str], Records | None] = field(default_factory=dict)

    @classmethod
    def read(cls, directory: str | Path) -> Run:
        directory = Path(directory)
        for name in ("config.json", "metrics.json"):
            if not (directory / name).exists():
                raise FileNotFoundError(f"{directory} is not a finished run: {name} is missing "
                                        "(run `robustgate run CONFIG.yaml` first)")
        config = parse_config(json.loads((directory / "config.json").read_text()),
                              ExperimentConfig, str(directory / "config.json"))
        return cls(directory, config, json.loads((directory / "metrics.json").read_text()))

    @property
    def metrics(self) -> dict[str, dict[str, Any]]:
        return self.result["test"]

    @property
    def compositions(self) -> list[CompositionSettings]:
        return self.config.compositions

    def records(self, kind: str, name: str) -> Records | None:
        """``records/<kind>/<name>.csv`` (read once), or ``None`` where the run has none."""
        key = (kind, name)
        if key not in self.read_records:
            path = self.directory / "records" / kind / f"{file_name(name)}.csv"
            self.read_records[key] = Records.read_csv(path) if path.exists() else None
        return self.read_records[key]

    def selection(self, label: str) -> tuple[np.ndarray | None, np.ndarray] | None:
        """Scores (``None`` for a selector without) and routes on the test set."""
        path = self.directory / "selection" / f"{file_name(label)}.csv"
        if not path.exists():
            return None
        rows = [line.split(",") for line in path.read_text().splitlines()[1:]]
        scores = None if rows and rows[0][1] == "" else np.array([float(r[1]) for r in rows])
        return scores, np.array([int(r[2]) for r in rows])


def _model_section(run: Run) -> Section:
    columns = ["model", "natural", "robust", "robust inaccuracy", "non-robust", "selection rate",
               "accuracy on selected"]
    keys = ["natural_accuracy", "robust_accuracy", "robust_inaccuracy", "non_robust",
            "selection_rate", "selected_accuracy"]
    rows = [[name, *[_percent(values.get(key)) for key in keys]]
            for name, values in run.metrics.items()]
    evaluation = run.config.evaluation
    return Section(
        "Models and compositions (indicator form)", columns, rows,
        [f"{run.result['samples']} test points of `{run.config.data.name}`; attack "
         f"`{run.result['attack']}` ({evaluation.attack.steps} iterations) at "
         f"{evaluation.threat.norm} eps = {run.result['eps']:g}; robustness selectors "
         f"checked at {run.result['selector_eps']:g}. Compositions are named branch→core, "
         "with the selector in brackets unless it is the robustness selector; in the indicator "
         "form the selector decides on the clean input. The mixing baseline's robust figures "
         "are on the adaptive subset. Wall time "
         f"{run.result['wall_time_s']:.0f} s."])


def _breakdown(run: Run, composition: CompositionSettings, eps: float) -> dict[str, int] | None:
    """Inputs the indicator form counts robust and accurate but the adaptive attack broke, split
    by the clean route, and inputs that held though the indicator form does not count them."""
    label = composition.label
    attacked, indicator = run.records("adaptive", label), run.records("composed", label)
    selection = run.selection(label)
    if attacked is None or indicator is None or selection is None:
        return None
    count = len(attacked)
    claimed = (indicator.accurate & indicator.robust_at(eps))[:count]
    held = attacked.accurate & attacked.robust_at(eps)
    answered_by_branch = selection[1][:count] != len(composition.branches)
    return {"selected": int((claimed & ~held & answered_by_branch).sum()),
            "abstained": int((claimed & ~held & ~answered_by_branch).sum()),
            "held_beyond": int((held & ~claimed).sum())}


def _adaptive_section(run: Run) -> Section:
    columns = ["composition", "natural", "robust (indicator form)", "robust (attacked)",
               "difference (points)", "points"]
    rows, notes = [], []
    eps = run.result["eps"]
    for composition in run.compositions:
        label = composition.label
        values = run.metrics.get(label, {})
        adaptive = values.get("adaptive")
        if not adaptive:
            continue
        indicator = adaptive.get("indicator_robust_accuracy")
        difference = adaptive.get("difference_points")
        rows.append([label, _percent(values["natural_accuracy"]), _percent(indicator),
                     _percent(adaptive["robust_accuracy"]),
                     "–" if difference is None else f"{difference:+.2f}",
                     str(adaptive["samples"])])
        parts = _breakdown(run, composition, eps)
        if parts is None or difference is None or (parts["selected"] + parts["abstained"]) == 0:
            continue
        why_selected = (
            "the indicator form counted them from the branch's robustness at 2·eps (or the "
            "core's, where it agrees), which an attack can only estimate"
            if composition.selector == "robustness" and composition.deployed_radius_factor == 1
            else
            "the indicator form takes the selector's decision on the clean input")
        notes.append(
            f"{label}: the attack breaks {parts['selected'] + parts['abstained']} of "
            f"{adaptive['samples']} inputs the indicator form counts robust and accurate. "
            f"{parts['selected']} were answered by a branch: the attack found a point where the "
            f"system answers otherwise (the selector abstains and the core is wrong, or the "
            f"branch changes its answer); {why_selected}. {parts['abstained']} were abstained: "
            "the attack steered them to where a branch answers, wrongly, the route the indicator "
            "form leaves out." + (
                f" {parts['held_beyond']} inputs held against the attack though the indicator "
                "form does not count them." if parts["held_beyond"] else ""))
    notes.insert(0, (
        "The adaptive attack searches the eps-ball of every input for a point where the whole "
        "system answers differently, judged by the selector's real decision at that point; the "
        "mixing baseline is attacked as one model with the evaluation attack. For the "
        "robustness selector the indicator form is the sound form: a selected input counts as "
        "robust where the branch is robust on B(x, 2·eps), which covers the selector's check "
        "at every reachable point, or where the core is robust and agrees; it leaves out the "
        "route of steering an abstained input to where the branch answers wrongly (what ERA "
        "trains against). For score-based selectors it takes the selector's decision on the "
        "clean input, i.e. the selector not attacked."))
    return Section("Adaptive attack on the composition vs the indicator form", columns, rows,
                   notes)


def _matched_section(run: Run) -> Section | None:
    """The selectors of each single branch, against its robustness selector's natural
    accuracy."""
    reference = {composition.branches[0]: run.metrics[composition.label]["natural_accuracy"]
                 for composition in run.compositions
                 if composition.selector == "robustness" and len(composition.branches) == 1
                 and composition.deployed_radius_factor == 1 and composition.label in run.metrics}
    rows = []
    for composition in run.compositions:
        values = run.metrics.get(composition.label)
        branch = composition.branches[0]
        if values is None or len(composition.branches) > 1 or branch not in reference:
            continue
        adaptive = values.get("adaptive") or {}
        gap = 100 * (values["natural_accuracy"] - reference[branch])
        rows.append([composition.label, composition.selector,
                     _percent(values["natural_accuracy"]), f"{gap:+.2f}",
                     _percent(adaptive.get("robust_accuracy")),
                     _percent(values.get("selection_rate")),
                     "matched" if abs(gap) <= 0.3 else "not matched (> 0.3 points)"])
    if not rows:
        return None
    return Section(
        "Selectors at matched composed natural accuracy",
        ["composition", "selector", "natural", "vs robustness selector (points)",
         "robust (attacked)", "selection rate", "±0.3 points"], rows,
        ["Every threshold (and the mixing weight) was chosen on validation data so that the "
         "composition's natural accuracy there matches the robustness selector's on the same "
         "branch, unless a coverage or selective accuracy was asked for. Robust accuracy is "
         "under the attack that suits each: the adaptive attack on the composition (confidence "
         "raising for confidence selectors and the gate), the evaluation attack on the mixed "
         "model."])


def _routes_section(run: Run) -> Section | None:
    rows = [[label, route, str(counts["correct"]), str(counts["wrong"])]
            for label, values in run.metrics.items()
            for route, counts in (values.get("routes") or {}).items()]
    if not rows:
        return None
    return Section("Per-route confusion counts (clean test inputs)",
                   ["composition", "route", "correct", "wrong"], rows)


def _selective_section(run: Run) -> tuple[Section | None, list[tuple[str, np.ndarray,
                                                                       np.ndarray]]]:
    rows, curves = [], []
    for composition in run.compositions:
        label = composition.label
        values = run.metrics.get(label, {})
        selection = run.selection(label)
        if selection is None or "selection_rate" not in values:
            continue
        accurate = run.records("test", composition.branches[0]).accurate
        scores, routes = selection
        risk = None if values.get("selected_accuracy") is None else 1 - values[
            "selected_accuracy"]
        aurc = values.get("aurc")
        rows.append([label, _percent(values["selection_rate"]), _percent(risk),
                     "–" if aurc is None else f"{aurc:.4f}"])
        if scores is not None:
            curves.append((label, *risk_coverage_curve(scores, accurate)))
        else:
            coverage = (routes == 0).mean()
            curves.append((label, np.array([coverage]), np.array([0.0 if risk is None
                                                                   else risk])))
    if not rows:
        return None, curves
    return Section(
        "Selective classification of each abstain model (branch + selector)",
        ["abstain model", "coverage", "selective risk", "AURC"], rows,
        ["Coverage is the selection rate, selective risk the error rate of the branch on the "
         "selected inputs, AURC the area under the risk–coverage curve of the selector's score "
         "(the robustness selector has no score: one point)."]), curves


def _autoattack_section(run: Run) -> Section | None:
    check = run.result.get("autoattack_check") or {}
    if not check:
        return None
    attack = run.result["attack"]
    rows, notes = [], []
    for name, values in check.items():
        rows.append([name, _percent(values[attack]), _percent(values["autoattack"]),
                     f"{values['difference_points']:+.2f}"])
        if values["agree_within_1_point"]:
            notes.append(f"{name}: the two agree within 1 point.")
        else:
            lower = "AutoAttack" if values["autoattack"] < values[attack] else attack
            notes.append(f"{name}: they differ by more than 1 point; {lower} gives the lower "
                         "robust accuracy, the figure to trust.")
    return Section("Robust accuracy: evaluation attack vs full AutoAttack",
                   ["model", attack, "AutoAttack (standard)", "difference (points)"], rows, notes)


def _sections(run: Run) -> list[Section]:
    """Every section of the report, figures included (the Markdown report leaves them out)."""
    selective, curves = _selective_section(run)
    if selective is not None:
        selective.figure = plots.risk_coverage(curves)
    models = _model_section(run)
    models.figure = plots.robust_vs_inaccuracy(run.metrics, run.config)
    adaptive = _adaptive_section(run)
    adaptive.figure = plots.composed_accuracies(run.metrics, run.compositions)
    sections = [models, _matched_section(run), adaptive if adaptive.rows else None,
                _threshold_section(run), _routes_section(run), selective,
                _autoattack_section(run)]
    return [section for section in sections if section is not None]


def _threshold_section(run: Run) -> Section | None:
    sweeps = []
    for composition in run.compositions:
        label = composition.label
        selection = run.selection(label)
        values = run.metrics.get(label, {})
        if selection is None or selection[0] is None or "threshold" not in values:
            continue
        accurate = run.records("test", composition.branches[0]).accurate
        sweeps.append((label, selection[0], accurate, values["threshold"]))
    if not sweeps:
        return None
    return Section("Selection rate and accuracy on the selected inputs against the threshold",
                   notes=["Dashed: the threshold chosen on validation data."],
                   figure=plots.threshold_sweeps(sweeps))


def markdown(run: Run, sections: list[Section]) -> str:
    """The sections with tables, in Markdown (figures are in the HTML report)."""
    lines = [f"# {run.config.name}\n"]
    for section in sections:
        if not section.columns:
            continue
        lines.append(f"## {section.title}\n")
        lines.append("| " + " | ".join(section.columns) + " |")
        lines.append("|---|" + "---:|" * (len(section.columns) - 1))
        lines += ["| " + " | ".join(row) + " |" for row in section.rows]
        lines.append("")
        lines += [f"- {note}" if len(section.notes) > 1 else note for note in section.notes]
        lines.append("")
    return "\n".join(lines)


def to_html(run: Run, sections: list[Section]) -> str:
    """The sections, figures embedded, as one HTML page."""
    title = html.escape(run.config.name)
    body = [f"<h1>{title}</h1>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        if section.figure:
            body.append(f'<img alt="{html.escape(section.title)}" '
                        f'src="data:image/png;base64,{section.figure}">')
        if section.columns:
            head = "".join(f"<th>{html.escape(c)}</th>" for c in section.columns)
            rows = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row)
                           + "</tr>" for row in section.rows)
            body.append(f"<table><tr>{head}</tr>{rows}</table>")
        body += [f"<p>{html.escape(note)}</p>" for note in section.notes]
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
             "padding:3px 8px;text-align:right}td:first-child,th:first-child{text-align:left}"
             "img{max-width:100%}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n")


def write_reports(directory: str | Path) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into the run directory; returns their paths."""
    run = Run.read(directory)
    paths = (run.directory / "report.md", run.directory / "report.html")
    sections = _sections(run)
    atomic_write_text(paths[0], markdown(run, sections))
    atomic_write_text(paths[1], to_html(run, sections))
    return paths
