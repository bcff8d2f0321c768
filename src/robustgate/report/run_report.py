"""The report of an experiment's run directory: ``report.md`` (tables) and ``report.html`` (one
file, the same tables and the plots embedded).

It reads what the run wrote: ``config.json``, ``metrics.json`` (the results,
``evaluate.results``, read by attribute), ``records/test/<model>.csv``,
``records/composed/<composition>.csv`` (sound form), ``records/adaptive/<composition>.csv``
and ``selection/<composition>.csv`` (scores and routes); smoothed models and certified
compositions from ``metrics.json``.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robustgate.config import CompositionSettings, ExperimentConfig, parse_config
from robustgate.evaluate import Records, Routes, risk_coverage_curve
from robustgate.evaluate.operating_points import (
    point_at,
    robustness_given_up,
    within_accuracy_drop,
)
from robustgate.evaluate.results import ExperimentResults, SplitResults
from robustgate.evaluate.statistics import mcnemar_p_value
from robustgate.io import atomic_write_text, file_name
from robustgate.registry import SELECTOR_KINDS
from robustgate.report import plots
from robustgate.report.decision_regions import FILE as REGIONS_FILE
from robustgate.select import describe_route


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


@dataclass
class Section:
    title: str
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figure: str | None = None  # a PNG, base64; HTML only
    image: str | None = None  # a PNG beside the report (its file name): linked and embedded


@dataclass
class Run:
    """What a run directory holds, read once."""

    directory: Path
    config: ExperimentConfig
    results: ExperimentResults
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
        return cls(directory, config, ExperimentResults.from_json(
            json.loads((directory / "metrics.json").read_text()), config))

    @property
    def metrics(self) -> SplitResults:
        """The results on the test points."""
        return self.results.test

    @property
    def compositions(self) -> list[CompositionSettings]:
        """The empirical compositions (the certified ones: :attr:`certified_compositions`)."""
        return [c for c in self.config.compositions if not SELECTOR_KINDS[c.selector].certified]

    @property
    def certified_compositions(self) -> list[CompositionSettings]:
        return [c for c in self.config.compositions if SELECTOR_KINDS[c.selector].certified]

    @property
    def bounded_models(self) -> list[str]:
        return [name for name, spec in self.config.models.items() if spec.bounds is not None]

    @property
    def smoothed_models(self) -> list[str]:
        return [name for name, spec in self.config.models.items() if spec.smoothing is not None]

    @property
    def empirical_metrics(self) -> SplitResults:
        """Metrics of the models attacked and of the empirical compositions."""
        certified = {*self.smoothed_models, *(c.label for c in self.certified_compositions)}
        return {name: values for name, values in self.metrics.items() if name not in certified}

    def records(self, kind: str, name: str) -> Records | None:
        """``records/<kind>/<name>.csv`` (read once), or ``None`` where the run has none."""
        key = (kind, name)
        if key not in self.read_records:
            path = self.directory / "records" / kind / f"{file_name(name)}.csv"
            self.read_records[key] = Records.read_csv(path) if path.exists() else None
        return self.read_records[key]

    def selection(self, label: str) -> Routes | None:
        """Routes and scores (``None`` for a selector without) on the test set."""
        path = self.directory / "selection" / f"{file_name(label)}.csv"
        if not path.exists():
            return None
        return Routes.read_csv(path)


SPLIT_NAMES = {"test": "test points", "train": "training points"}


def _model_section(run: Run, split: str = "test") -> Section:
    metrics = (run.empirical_metrics if split == "test" else run.results.split(split))
    exact = any(values.exact is not None for values in metrics.values())
    columns = ["model", "natural", "robust", "robust inaccuracy", "non-robust", "selection rate",
               "accuracy on selected", "if the selector were not attacked",
               *(["robust (exact)"] if exact else [])]
    keys = ["natural_accuracy", "robust_accuracy", "robust_inaccuracy", "non_robust",
            "selection_rate", "selected_accuracy", "unattacked_robust_accuracy"]
    rows = [[name, *[_percent(getattr(values, key)) for key in keys],
             *([_percent((values.exact or {}).get("robust_accuracy"))] if exact else [])]
            for name, values in metrics.items()]
    if split != "test":
        return Section(f"Models and compositions on the {SPLIT_NAMES[split]}", columns, rows,
                       [f"The same models, attack and count on the {SPLIT_NAMES[split]} of "
                        f"`{run.config.data.name}` (robustness-selector compositions only, at "
                        "the κ they deploy on the test points)."])
    evaluation = run.config.evaluation
    notes = [
        f"{run.results.samples} test points of `{run.config.data.name}`; robustness checked "
        f"by `{run.results.attack}` ({evaluation.attack.steps} iterations) at "
        f"{evaluation.threat.norm} eps = {run.results.eps:g}. Compositions are named "
        "branch→core, with the selector in brackets unless it is the robustness selector "
        "(with κ where it checks B(x', κ·eps) around the input it sees). A composition's robust "
        "accuracy is the sound form of DESIGN.md section 1: for the robustness selector, the "
        "branch is right and either the selection is stable (the branch robust at (κ+1)·eps) "
        "or the core is robust and right; for the other selectors, both parts are robust and "
        "right. It is a lower bound on the truth as far as the robustness checks behind the "
        "records are exact (the deployed robustness selector uses the same attack). The column "
        "'if the selector were not attacked' takes the selection on the clean input (the "
        "paper's Figure 1): not a robust accuracy. The mixing baseline's robust figures are on "
        f"the adaptive subset. Wall time {run.results.wall_time_s:.0f} s."]
    if exact:
        notes.append(
            "'robust (exact)' is the truth for the deployed composition (its selector with an "
            f"exact robustness check), computed on a grid of spacing {evaluation.exact_grid:g} "
            "over the domain, every eps-ball checked point by point: the sound count is a lower "
            "bound on it as far as the attack behind the records is exact, the unattacked form "
            "is not.")
    return Section("Models and compositions (compositions counted in the sound form)", columns,
                   rows, notes)


def _regions_section(run: Run) -> Section | None:
    if not (run.directory / REGIONS_FILE).exists():
        return None
    return Section("Decision regions", notes=[
        "One panel per model and per robustness-selector composition (the deployed system, "
        "with its robustness check by the evaluation attack): hatched where the selector "
        "abstains and the core answers; ringed, the robust-but-wrong points, for a composition "
        "as counted in the sound form and, in its '(unattacked)' panel, with the selection on "
        "the clean input."], image=REGIONS_FILE)


def _certified_models_section(run: Run) -> Section | None:
    """Certified metrics of the smoothed models at every radius summarized."""
    if not run.smoothed_models:
        return None
    columns = ["model", "σ (σ_train)", "radius", "L2 radius", "natural (smoothed)", "certified",
               "certified robust inaccuracy", "abstain", "s per input"]
    rows, notes = [], []
    for name in run.smoothed_models:
        values = run.metrics[name]
        train = "–" if values.sigma_train is None else f"{values.sigma_train:g}"
        for radius, at in values.by_radius.items():
            flag = " (above the largest certifiable)" if at.above_max_certifiable else ""
            rows.append([name, f"{values.sigma:g} ({train})", radius,
                         f"{at.l2_radius:.3g}{flag}", _percent(at.natural_accuracy),
                         _percent(at.certified_accuracy),
                         _percent(at.certified_robust_inaccuracy),
                         _percent(at.abstain_rate), f"{values.mean_seconds_per_sample:.3g}"])
        notes.append(f"{name}: smoothed at σ = {values.sigma:g}, N = {values.n}, α = "
                     f"{values.alpha:g} on {values.samples} test points; no L2 radius "
                     f"above {values.max_certifiable_l2_radius:.3g} can be certified there.")
    norm = run.config.evaluation.threat.norm
    if norm == "linf":
        notes.append("Linf radii are certified through the L2 ball that covers them "
                     "(eps·√d).")
    notes.append("Certified: the smoothed prediction is right and certified at the radius; "
                 "certified robust inaccuracy: certified and wrong; an abstention counts as "
                 "wrong and certifies nothing.")
    curves = {f"{name} (σ = {run.metrics[name].sigma:g})": [
        (float(radius), at.certified_accuracy, at.certified_robust_inaccuracy)
        for radius, at in run.metrics[name].by_radius.items()] for name in run.smoothed_models}
    return Section("Certified models (randomized smoothing)", columns, rows, notes,
                   plots.certified_curves(curves))


def _bounded_models_section(run: Run) -> Section | None:
    """Certified (by each bound method) against empirical robust accuracy per model and
    radius."""
    if not run.bounded_models:
        return None
    columns = ["model", "method", "radius", "natural", "certified", "certified robust "
               "inaccuracy", "robust (attacked)", "s per input"]
    rows = []
    curves: dict[str, list[tuple[float, float, float]]] = {}
    samples = 0
    for name in run.bounded_models:
        bounds = run.metrics[name].bounds
        for method, by_radius in bounds.by_method.items():
            seconds = bounds.seconds_per_sample[method]
            for radius, at in by_radius.items():
                rows.append([name, method, radius, _percent(at.natural_accuracy),
                             _percent(at.certified_accuracy),
                             _percent(at.certified_robust_inaccuracy),
                             _percent(at.empirical_robust_accuracy), f"{seconds:.3g}"])
                curves.setdefault(f"{name} ({method})", []).append(
                    (float(radius), at.certified_accuracy, at.certified_robust_inaccuracy))
        samples = samples or bounds.samples
    notes = [f"Bound propagation on the first {samples} test points: certified where the lower "
             "bound of every logit difference f_ŷ − f_j over the ball (with the domain) is "
             "positive. The attacked robust accuracy is an upper bound, the certified one a "
             "lower bound: the gap is the attack's slack plus the bounds' looseness. crown-ibp "
             "is CROWN with IBP's intermediate bounds; ibp+crown takes the tighter of IBP's and "
             "CROWN's bound of each difference."]
    return Section("Certified models (bound propagation)", columns, rows, notes,
                   plots.certified_curves(curves))


def _certified_compositions_section(run: Run) -> Section | None:
    if not run.certified_compositions:
        return None
    columns = ["composition", "natural", "core natural", "certified (sound)", "95% interval",
               "certified robust inaccuracy", "selection rate", "stable",
               "if the selector were not attacked"]
    rows, notes = [], []
    for composition in run.certified_compositions:
        values = run.metrics[composition.label]
        rows.append([composition.label, _percent(values.natural_accuracy),
                     _percent(values.core_natural_accuracy),
                     _percent(values.certified_accuracy),
                     _interval(values.certified_accuracy_interval),
                     _percent(values.certified_robust_inaccuracy),
                     _percent(values.selection_rate), _percent(values.stable_rate),
                     _percent(values.certified_accuracy_if_selector_not_attacked)])
        note = SELECTOR_KINDS[composition.selector].report_note(composition.label, values)
        if note is not None:
            notes.append(note)
    notes.append("A core without a certificate adds natural accuracy only, so the certified "
                 "figure is then the branch right and its selection stable. The last column "
                 "takes the selection on the clean input: not a certified accuracy.")
    return Section("Certified compositions", columns, rows, notes)


def _interval(interval: list[float] | None) -> str:
    return "–" if not interval else f"[{100 * interval[0]:.1f}, {100 * interval[1]:.1f}]"


def _indices(indices: list[int], shown: int = 50) -> str:
    """Input indices, the first ``shown`` of them (the rest are in ``metrics.json``)."""
    more = f" and {len(indices) - shown} more, listed in metrics.json" if len(
        indices) > shown else ""
    return ", ".join(str(index) for index in indices[:shown]) + more


def _cascade_section(run: Run) -> Section | None:
    """The robustness selectors deployed as a cascade: the stages chosen, the inputs each
    stage decided on the test points, and the decisions that differ from the attack's."""
    columns = ["composition", "branch", "stages", "decided per stage", "selected",
               "decisions unlike the records'", "seconds per input (chosen on)"]
    rows = []
    for composition in run.compositions:
        for branch, details in run.metrics[composition.label].extras.get("cascade", {}).items():
            choice = details["choice"]
            decided = ", ".join(f"{stage} {count}" for stage, count in details["decided"].items())
            measured = ", ".join(f"{stage} {seconds:.2g}" for stage, seconds
                                 in choice["stage_seconds_per_input"].items()
                                 if seconds is not None)
            differing = details["differing_decisions"]
            rows.append([composition.label, branch, describe_route(choice["stages"]),
                         decided, str(details["selected"]),
                         str(differing) + (f" ({_indices(details['differing_indices'], 10)})"
                                           if differing else ""),
                         f"{measured or '–'} ({choice['inputs']} validation inputs)"])
    if not rows:
        return None
    return Section("The robustness selector as a cascade", columns, rows, [
        "A bound stage selects an input it certifies on the selector's ball without running the "
        "attack; the attack decides the rest. The stages were chosen by their measured cost per "
        "decided input on validation inputs, so that the cascade is no slower than the attack "
        "alone. A decision unlike the records' (inputs listed) is an input a stage certified "
        "where the records' attack reports a flip (a margin within the float tolerance of 0), "
        "or one the attack, run in another batch, decided otherwise; the count uses the "
        "cascade's own selection."])


def _adaptive_section(run: Run) -> Section:
    columns = ["composition", "natural", "robust (counted)", "95% interval", "robust (attacked)",
               "95% interval", "counted but broken", "points"]
    rows, notes = [], []
    for composition in run.compositions:
        label = composition.label
        values = run.metrics.get(label)
        adaptive = None if values is None else values.adaptive
        if adaptive is None:
            continue
        counted, samples = adaptive.counted_robust_accuracy, adaptive.samples
        broken = adaptive.counted_but_broken
        rows.append([label, _percent(values.natural_accuracy), _percent(counted),
                     _interval(adaptive.counted_robust_accuracy_interval),
                     _percent(adaptive.robust_accuracy),
                     _interval(adaptive.robust_accuracy_interval),
                     "–" if broken is None else str(broken), str(samples)])
        if counted is None:
            continue
        gap = 100 * (adaptive.robust_accuracy - counted)
        p_value = mcnemar_p_value(adaptive.held_but_not_counted or 0, broken or 0, "greater")
        verdict = (f"{'beyond' if p_value < 0.05 else 'within'} the sampling error: exact "
                   "McNemar test on the inputs only one of them holds, one-sided (the count is a "
                   f"lower bound and the attack an upper one by construction), p = {p_value:.3g}")
        notes.append(f"{label}: the attack holds {gap:+.1f} points against the count "
                     f"({verdict}).")
        if broken:
            indices = adaptive.counted_but_broken_indices
            which = "" if indices is None else f" (test inputs {_indices(indices)})"
            notes.append(
                f"{label}: the attack broke {broken} inputs the count holds robust and "
                f"accurate{which}: there, the robustness checks behind the records missed what "
                "the adaptive attack found, and the count is not a lower bound until they are "
                "made stronger.")
        sanity = adaptive.sanity
        if sanity:
            by_eps = ", ".join(f"{100 * value:.1f}% at {eps}"
                               for eps, value in sanity["robust_accuracy_by_eps"].items())
            notes.append(
                f"{label}: sanity checks on {sanity['samples']} inputs: Square "
                f"({sanity['square']['queries']} queries, judged by the deployed decision) holds "
                f"{100 * sanity['square']['robust_accuracy']:.1f}% where the adaptive attack holds "
                f"{100 * sanity['gradient']['robust_accuracy']:.1f}%"
                + ("; Square breaks more beyond chance: the gradient attack looks masked and its "
                   "figure is not to be trusted" if sanity["gradient_attack_masked"] else "")
                + f"; at larger eps the adaptive attack holds {by_eps or 'nothing was checked'}"
                + ("" if sanity["falls_as_eps_grows"] else " (it does not fall as eps grows: "
                   "suspect the attack)") + ".")
        candidates = adaptive.candidates
        if candidates:
            found = ", ".join(f"{name}: {count}" for name, count in candidates.items() if count)
            notes.append(f"{label}: inputs broken first by each candidate: {found or 'none'}.")
    notes.insert(0, (
        "The adaptive attack searches the eps-ball of every input for a point where the whole "
        "system answers differently, judged by the selector's real decision at that point: the "
        "core alone, then every route (into the core's errors with the selectors pulled to "
        "abstain, into a branch's errors with its selector pulled to select, towards the "
        "branch's likeliest wrong classes) at each weight of the selector term. Its figure is an "
        "upper bound; the counted figure a lower bound as far as the records' robustness checks "
        "are exact. Intervals are Clopper–Pearson at 95%. The mixing baseline is attacked as one "
        "model with the evaluation attack."))
    return Section("Adaptive attack on the composition vs the count", columns, rows, notes)


def _operating_point_section(run: Run) -> Section | None:
    rows, notes, curves = [], [], []
    for composition in run.config.compositions:
        values = run.metrics.get(composition.label)
        point = None if values is None else values.operating_point
        if point is None:
            continue
        chosen = point.chosen
        certified = SELECTOR_KINDS[composition.selector].certified
        counted = values.certified_accuracy if certified else values.robust_accuracy
        # a certified composition's core accuracy is on the certified test points
        core_natural = (values.core_natural_accuracy if certified
                        else run.metrics[composition.core].natural_accuracy)
        drop = chosen.max_accuracy_drop
        for kind, curve in (("validation", point.validation_curve), ("test", point.test_curve)):
            for entry in curve:
                rows.append([composition.label, kind, f"{entry.kappa:g}",
                             _percent(entry.natural_accuracy),
                             _percent(entry.robust_accuracy),
                             _percent(entry.selection_rate),
                             "chosen" if entry.kappa == chosen.kappa else ""])
        target = core_natural - (drop or 0.0)
        curves.append((composition.label, {"validation": point.validation_curve,
                                           "test": point.test_curve}, point.kappa, target))
        shortfall = 100 * (core_natural - values.natural_accuracy)
        if not chosen.meets_target:
            notes.append(f"{composition.label}: no κ meets the target on validation data; the "
                         f"most accurate, κ = {chosen.kappa:g}, was chosen.")
        given_up = robustness_given_up(point.validation_curve, chosen)
        if given_up is not None:
            notes.append(
                f"{composition.label}: warning: κ = {chosen.kappa:g} keeps the accuracy "
                f"target only by giving up most of the robustness: on validation data it keeps "
                f"{100 * chosen.robust_accuracy:.1f}% {'certified' if certified else 'sound'} "
                f"robust accuracy, {100 * given_up.share_kept:.0f}% of the "
                f"{100 * given_up.robust_accuracy:.1f}% at κ = {given_up.kappa:g}; allow a "
                "larger accuracy drop or make the branch more accurate.")
        if not within_accuracy_drop(values.natural_accuracy, core_natural, drop):
            notes.append(f"{composition.label}: on the test set the composition is "
                         f"{shortfall:.2f} points less accurate than its core, more than the "
                         f"{100 * drop:g} points allowed.")
        else:
            notes.append(f"{composition.label}: κ = {chosen.kappa:g}; test natural accuracy "
                         f"{100 * values.natural_accuracy:.2f}% (core "
                         f"{100 * core_natural:.2f}%), "
                         f"{'certified' if certified else 'sound robust'} accuracy "
                         f"{100 * counted:.2f}%.")
    if not rows:
        return None
    notes.insert(0, "κ is chosen on validation data: the highest sound robust accuracy (for "
                    "the bound selector, certified accuracy) whose composed natural accuracy is "
                    "at most the allowed drop below the core's. The test curve is shown for "
                    "reference, never used to choose.")
    return Section("Operating points of the robustness and bound selectors",
                   ["composition", "data", "κ", "natural", "robust (sound or certified)",
                    "selection rate", ""], rows, notes, plots.operating_curves(curves))


def _search_sections(run: Run) -> list[Section]:
    """Per search of the recipe (``pipeline.search``): every candidate's pair on the choosing,
    confirming and test points, the choice, and the frontier."""
    sections = []
    for search in run.config.searches:
        result = run.results.searches.get(search.name)
        if result is None:
            continue
        choice, test = result.choice, result.test
        measure = "certified" if SELECTOR_KINDS[search.selector].certified else "sound robust"
        rows = []
        for candidate in result.candidates:
            name = candidate.name
            entry = choice.candidates[name]
            choosing, confirming = entry.choosing, entry.confirming
            tested = point_at(result.curves["test"][name], entry.kappa)
            bound = confirming.drop_upper_bound
            verdict = ("chosen" if name == choice.chosen else "accepted"
                       if confirming.accepted else "rejected" if bound is not None
                       else "misses the target on the choosing points")
            rows.append([name, ", ".join(f"{key} = {json.dumps(value)}" for key, value
                                         in candidate.overrides.items()),
                         str(candidate.best_epoch), f"{entry.kappa:g}",
                         _percent(choosing.natural_accuracy),
                         _percent(choosing.robust_accuracy),
                         _percent(confirming.natural_accuracy),
                         "–" if bound is None else f"{100 * bound:.2f}",
                         _percent(tested.natural_accuracy),
                         _percent(tested.robust_accuracy), verdict])
        drop = 100 * choice.max_accuracy_drop
        choosing_size = entry.choosing.samples
        confirming_size = entry.confirming.samples
        notes = [
            f"{choice.tried} candidates tried ({choice.pairs} pairs of recipe and κ"
            + (f"; sampled by Optuna from a grid of {result.grid_size}"
               if result.grid_size > choice.tried else "")
            + "). Each "
            f"candidate's κ is chosen on the {choosing_size} choosing points (the highest "
            f"{measure} accuracy whose composed natural accuracy is at most {drop:g} points "
            f"below the core's); the {choice.confirmed} that meet the target there are "
            f"confirmed on the {confirming_size} disjoint confirming points: accepted where the "
            "one-sided upper confidence bound on the accuracy drop against the core, paired "
            "(Clopper–Pearson on the inputs only the core answers rightly minus those only the "
            f"composition does, at {100 * choice.pair_confidence:g}% each: "
            f"{100 * choice.confidence:g}% over all the pairs confirmed), is at most "
            f"{drop:g} points. The accepted pair of highest {measure} accuracy on the choosing "
            "points wins. Test figures are shown beside, never used to choose."]
        picked = test.candidate
        given_up = choice.robustness_given_up
        if given_up is not None:
            robust = choice.candidates[picked].choosing.robust_accuracy
            notes.append(
                f"Warning: candidate {picked} keeps the accuracy target only by giving up "
                f"robustness: {100 * robust:.2f}% {measure} on the choosing points, against "
                f"{100 * given_up.robust_accuracy:.2f}% for the most robust pair tried; the "
                "target may be out of reach of these recipes.")
        core_test = test.core_natural_accuracy
        difference = 100 * (test.natural_accuracy - core_test)
        if choice.chosen is None:
            notes.append(f"No candidate is confirmed within {drop:g} points of the core; the "
                         f"closest is candidate {test.candidate} at κ = {test.kappa:g}.")
        notes.append(
            f"{'Chosen' if test.chosen else 'Closest'}: candidate {test.candidate} at "
            f"κ = {test.kappa:g}. On the {test.samples} test points: natural accuracy "
            f"{100 * test.natural_accuracy:.2f}% against the core's {100 * core_test:.2f}% "
            f"({difference:+.2f} points; {test.gained} inputs right only for the composition, "
            f"{test.lost} only for the core; exact McNemar test, two-sided, p = "
            f"{test.accuracy_p_value:.3g}), {measure} accuracy "
            f"{100 * test.robust_accuracy:.2f}% (core alone "
            f"{100 * test.core_robust_accuracy:.2f}%).")
        for label, comparison in test.against.items():
            notes.append(
                f"Against {label} on {comparison.samples} test points: {measure} accuracy "
                f"{100 * comparison.first:.2f}% against {100 * comparison.second:.2f}% "
                f"({comparison.only_first} inputs held only by the chosen composition, "
                f"{comparison.only_second} only by {label}; exact McNemar test, two-sided, "
                f"p = {comparison.p_value:.3g}).")
        sections.append(Section(
            f"Operating point over training: {search.name}",
            ["candidate", "recipe", "epoch", "κ", "natural (choosing)",
             f"{measure} (choosing)", "natural (confirming)", "drop bound (points)",
             "natural (test)", f"{measure} (test)", ""], rows, notes,
            plots.search_frontier(result)))
    return sections


def _matched_section(run: Run) -> Section | None:
    """The selectors of each single branch, against its robustness selector's natural
    accuracy."""
    reference = {composition.branches[0]: run.metrics[composition.label].natural_accuracy
                 for composition in run.compositions
                 if SELECTOR_KINDS[composition.selector].calibration_reference
                 and len(composition.branches) == 1
                 and composition.kappa == 1 and composition.operating_point is None
                 and composition.label in run.metrics}
    tolerance = 100 * run.config.calibration.match_tolerance
    rows = []
    for composition in run.compositions:
        values = run.metrics.get(composition.label)
        branch = composition.branches[0]
        if values is None or len(composition.branches) > 1 or branch not in reference:
            continue
        gap = 100 * (values.natural_accuracy - reference[branch])
        rows.append([composition.label, composition.selector,
                     _percent(values.natural_accuracy), f"{gap:+.2f}",
                     _percent(None if values.adaptive is None else values.adaptive.robust_accuracy),
                     _percent(values.selection_rate),
                     "matched" if abs(gap) <= tolerance
                     else f"not matched (> {tolerance:g} points)"])
    if all(SELECTOR_KINDS[row[1]].calibration_reference for row in rows):  # nothing matched
        return None
    return Section(
        "Selectors at matched composed natural accuracy",
        ["composition", "selector", "natural", "vs robustness selector (points)",
         "robust (attacked)", "selection rate", f"±{tolerance:g} points"], rows,
        ["Every threshold (and the mixing weight) was chosen on validation data so that the "
         "composition's natural accuracy there matches the robustness selector's on the same "
         "branch, unless a coverage or selective accuracy was asked for. Robust accuracy is "
         "under the attack that suits each: the adaptive attack on the composition (confidence "
         "raising for confidence selectors and the gate), the evaluation attack on the mixed "
         "model."])


def _routes_section(run: Run) -> Section | None:
    rows = [[label, route, str(counts["correct"]), str(counts["wrong"])]
            for label, values in run.empirical_metrics.items()
            for route, counts in (values.routes or {}).items()]
    if not rows:
        return None
    return Section("Per-route confusion counts (clean test inputs)",
                   ["composition", "route", "correct", "wrong"], rows)


def _selective_section(run: Run) -> tuple[Section | None, list[tuple[str, np.ndarray,
                                                                       np.ndarray]]]:
    rows, curves = [], []
    for composition in run.compositions:
        label = composition.label
        values = run.metrics.get(label)
        selection = run.selection(label)
        if selection is None or values is None or values.selection_rate is None:
            continue
        accurate = run.records("test", composition.branches[0]).accurate
        risk = None if values.selected_accuracy is None else 1 - values.selected_accuracy
        aurc = values.aurc
        rows.append([label, _percent(values.selection_rate), _percent(risk),
                     "–" if aurc is None else f"{aurc:.4f}"])
        if selection.scores is not None:
            curves.append((label, *risk_coverage_curve(selection.scores, accurate)))
        else:
            coverage = (selection.routes == 0).mean()
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
    check = run.results.autoattack_check
    if not check:
        return None
    attack = run.results.attack
    rows, notes = [], []
    for name, values in check.items():
        rows.append([name, _percent(values.evaluation), _percent(values.autoattack),
                     f"{values.difference_points:+.2f}"])
        if values.agree_within_1_point:
            notes.append(f"{name}: the two agree within 1 point.")
        else:
            lower = "AutoAttack" if values.autoattack < values.evaluation else attack
            notes.append(f"{name}: they differ by more than 1 point; {lower} gives the lower "
                         "robust accuracy, the figure to trust.")
        by_radius = values.missed_flips_by_radius or {f"{run.results.eps:g}": values.missed_flips}
        for radius, missed in by_radius.items():
            if missed:
                notes.append(
                    f"{name}: at eps {radius}, AutoAttack flipped {len(missed)} inputs the "
                    f"records' check held robust (test inputs {_indices(missed)}): each is a "
                    "witness, not a sampling error, that the check is weaker than AutoAttack on "
                    "this model, and every count that leans on its records at that radius may "
                    "count inputs that are not robust.")
    records_check = run.config.evaluation.records_check
    notes.insert(0, (
        f"The records were written by `{attack}` "
        + ("raised to the strong check (margin PGD with restarts, then APGD-CE and APGD-T; "
           "or AutoAttack's standard version: attacks.records_check)" if records_check == "strong"
           else "as configured (evaluation.records_check: attack, the cheaper check)")
        + f"; AutoAttack checked them on the first {run.config.evaluation.autoattack_check} "
        "test points at every radius they hold."))
    return Section("Robust accuracy: the records' check vs full AutoAttack",
                   ["model", attack, "AutoAttack (standard)", "difference (points)"], rows, notes)


def _sections(run: Run) -> list[Section]:
    """Every section of the report, figures included (the Markdown report leaves them out)."""
    selective, curves = _selective_section(run)
    if selective is not None:
        selective.figure = plots.risk_coverage(curves)
    models = _model_section(run)
    models.figure = plots.robust_vs_inaccuracy(run.empirical_metrics, run.config)
    adaptive = _adaptive_section(run)
    adaptive.figure = plots.composed_accuracies(run.metrics, run.compositions)
    others = [_model_section(run, split) for split in run.config.evaluation.splits
              if split != "test"]
    sections = [models, *others, _regions_section(run), _certified_models_section(run),
                _bounded_models_section(run),
                _certified_compositions_section(run),
                _operating_point_section(run), _cascade_section(run), *_search_sections(run),
                _matched_section(run),
                adaptive if adaptive.rows else None,
                _threshold_section(run), _routes_section(run), selective,
                _autoattack_section(run)]
    return [section for section in sections if section is not None]


def _threshold_section(run: Run) -> Section | None:
    sweeps = []
    for composition in run.compositions:
        label = composition.label
        selection = run.selection(label)
        values = run.metrics.get(label)
        if (selection is None or selection.scores is None or values is None
                or values.threshold is None):
            continue
        accurate = run.records("test", composition.branches[0]).accurate
        sweeps.append((label, selection.scores, accurate, values.threshold))
    if not sweeps:
        return None
    return Section("Selection rate and accuracy on the selected inputs against the threshold",
                   notes=["Dashed: the threshold chosen on validation data."],
                   figure=plots.threshold_sweeps(sweeps))


def markdown(title: str, sections: list[Section]) -> str:
    """The sections with tables, in Markdown (figures are in the HTML report)."""
    lines = [f"# {title}\n"]
    for section in sections:
        if section.image is not None:
            lines += [f"## {section.title}\n", f"![{section.title}]({section.image})\n"]
            lines += [*section.notes, ""]
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


def to_html(title: str, sections: list[Section], directory: Path | None = None) -> str:
    """The sections, figures embedded (images read from ``directory``), as one HTML page."""
    title = html.escape(title)
    body = [f"<h1>{title}</h1>"]
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>")
        figure = section.figure
        if section.image is not None and directory is not None:
            figure = base64.b64encode((directory / section.image).read_bytes()).decode("ascii")
        if figure:
            body.append(f'<img alt="{html.escape(section.title)}" '
                        f'src="data:image/png;base64,{figure}">')
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
    atomic_write_text(paths[0], markdown(run.config.name, sections))
    atomic_write_text(paths[1], to_html(run.config.name, sections, run.directory))
    return paths
