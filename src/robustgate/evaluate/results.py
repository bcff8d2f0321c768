"""An experiment's results as objects: what the pipeline returns and the report reads, by
attribute. ``metrics.json`` is their serialization (:meth:`ExperimentResults.to_json`), key for key
as before they were objects, so that runs stay comparable (``benchmarks/compare_runs.py``).

Each object names the figures the report reads, and is made from the run's evidence (records,
certificates) by its ``of`` where the pipeline makes it; what only one selector kind adds (a
threshold's calibration, a bound method, a guarantee's wording) rides along in ``extras`` and is
written beside them. Figures that only some results carry are fields that default to ``None``
and are left out of the file where absent (:data:`OPTIONAL`), so that a result reads back as it
was written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from robustgate.certify import max_certifiable_radius
from robustgate.config import CompositionSettings, ExperimentConfig, SmoothingSettings
from robustgate.evaluate.certified import (
    BoundCertificates,
    Certificates,
    certified_metrics,
    smoothing_metrics,
)
from robustgate.evaluate.metrics import robustness_metrics
from robustgate.evaluate.records import Records
from robustgate.evaluate.sound_count import composition_metrics
from robustgate.registry import SELECTOR_KINDS
from robustgate.threat import ThreatModel

# a field with this metadata is left out of the file where it is ``None``
OPTIONAL = {"optional": True}


def _optional(default: Any = None) -> Any:
    return field(default=default, metadata=OPTIONAL)


@dataclass
class Result:
    """Figures written as one JSON object: the fields (results of :attr:`nested` as their own
    objects), then ``extras``."""

    extras: dict[str, Any] = field(default_factory=dict, kw_only=True)
    # fields holding results, by a form of their type: ``Class`` (a result), ``(form,)`` (a
    # ``{key: …}`` of that form), ``[form]`` (a list of that form)
    nested: ClassVar[dict[str, Any]] = {}

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {}
        for item in fields(self):
            if item.name == "extras":
                continue
            value = getattr(self, item.name)
            if value is None and item.metadata.get("optional"):
                continue
            data[item.name] = _plain(value)
        return {**data, **self.extras}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Any:
        names = {item.name for item in fields(cls)} - {"extras"}
        values: dict[str, Any] = {}
        for name in names & set(data):
            value, form = data[name], cls.nested.get(name)
            values[name] = value if value is None or form is None else _read(form, value)
        return cls(**values, extras={key: value for key, value in data.items()
                                     if key not in names})


def _plain(value: Any) -> Any:
    """``value`` with every result in it (in lists and dicts too) as its JSON object."""
    if isinstance(value, Result):
        return value.to_json()
    if isinstance(value, dict):
        return {key: _plain(entry) for key, entry in value.items()}
    if isinstance(value, list):
        return [_plain(entry) for entry in value]
    return value


def _read(form: Any, value: Any) -> Any:
    """``value`` read back by ``form`` (:attr:`Result.nested`)."""
    if isinstance(form, tuple):
        return {key: _read(form[0], entry) for key, entry in value.items()}
    if isinstance(form, list):
        return [_read(form[0], entry) for entry in value]
    return form.from_json(value)


@dataclass
class CertifiedFigures(Result):
    """Certified figures at one radius (``evaluate.certified_metrics``)."""

    natural_accuracy: float
    certified_accuracy: float
    certified_robust_inaccuracy: float
    not_certified: float
    abstain_rate: float


@dataclass
class SmoothedFigures(CertifiedFigures):
    """A smoothed model's certified figures at one radius, with the L2 radius certified for it
    and whether that lies above the largest its certificates can certify."""

    l2_radius: float
    above_max_certifiable: bool


@dataclass
class BoundFigures(CertifiedFigures):
    """A bounded model's certified figures by one method at one radius, with its attacked
    robust accuracy beside (``None`` where it was not attacked at that radius)."""

    empirical_robust_accuracy: float | None


@dataclass
class BoundResult(Result):
    """A bounded model's certificates: figures by method and radius, on the first ``samples``
    test points, and the seconds each method took per input."""

    by_method: dict[str, dict[str, BoundFigures]]
    samples: int
    seconds_per_sample: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"bounds": {method: {radius: figures.to_json()
                                    for radius, figures in by_radius.items()}
                           for method, by_radius in self.by_method.items()},
                "bound_samples": self.samples,
                "bound_seconds_per_sample": self.seconds_per_sample}

    @classmethod
    def of(cls, certificates: dict[str, BoundCertificates], empirical: Records,
           radii: list[float]) -> BoundResult:
        """Certified figures by each method at each radius, beside the empirical robust
        accuracy at the radii the model was attacked at (``empirical``, on the same points)."""
        samples = len(next(iter(certificates.values())))
        attacked = Records(empirical.labels[:samples], empirical.predictions[:samples],
                           {r: flags[:samples] for r, flags in empirical.robust.items()})
        by_method = {}
        for method, certified in certificates.items():
            records = certified.records()
            by_method[method] = {
                f"{radius:g}": BoundFigures(
                    **certified_metrics(records, radius), empirical_robust_accuracy=(
                        float((attacked.accurate & attacked.robust_at(radius)).mean())
                        if attacked.has_radius(radius) else None))
                for radius in radii}
        return cls(by_method, samples, {method: float(c.seconds.mean())
                                        for method, c in certificates.items()})

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BoundResult:
        return cls({method: {radius: BoundFigures.from_json(figures)
                             for radius, figures in by_radius.items()}
                    for method, by_radius in data["bounds"].items()},
                   data["bound_samples"], data["bound_seconds_per_sample"])


@dataclass
class ModelResult(Result):
    """An attacked model on one split (``evaluate.robustness_metrics``), with its bound
    certificates where it has some."""

    natural_accuracy: float
    robust_accuracy: float
    robust_inaccuracy: float
    non_robust: float
    bounds: BoundResult | None = None
    # what only a composition has
    selection_rate: ClassVar[None] = None
    selected_accuracy: ClassVar[None] = None
    unattacked_robust_accuracy: ClassVar[None] = None
    routes: ClassVar[None] = None
    exact: ClassVar[None] = None

    @classmethod
    def of(cls, records: Records, eps: float) -> ModelResult:
        return cls(**robustness_metrics(records.accurate, records.robust_at(eps)))

    def to_json(self) -> dict[str, Any]:
        data = {"natural_accuracy": self.natural_accuracy,
                "robust_accuracy": self.robust_accuracy,
                "robust_inaccuracy": self.robust_inaccuracy, "non_robust": self.non_robust}
        return {**data, **({} if self.bounds is None else self.bounds.to_json()), **self.extras}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelResult:
        bound_keys = {"bounds", "bound_samples", "bound_seconds_per_sample"}
        result = super().from_json({key: value for key, value in data.items()
                                    if key not in bound_keys})
        result.bounds = BoundResult.from_json(data) if "bounds" in data else None
        return result


@dataclass
class SmoothedModelResult(Result):
    """A smoothed model's certificates: the figures at eps and by radius, with the smoothing
    settings they were made with."""

    natural_accuracy: float
    certified_accuracy: float
    certified_robust_inaccuracy: float
    not_certified: float
    abstain_rate: float
    sigma: float
    sigma_train: float | None
    n: int
    alpha: float
    samples: int
    max_certifiable_l2_radius: float
    mean_seconds_per_sample: float
    by_radius: dict[str, SmoothedFigures]
    nested: ClassVar[dict[str, Any]] = {"by_radius": (SmoothedFigures,)}

    @classmethod
    def of(cls, certificates: Certificates, settings: SmoothingSettings, threat: ThreatModel,
           radii: list[float], dimension: int, sigma_train: float | None
           ) -> SmoothedModelResult:
        """A smoothed model's figures at eps and at every radius of ``radii``."""
        records = certificates.records(threat, [threat.eps, *radii], dimension)
        largest = max_certifiable_radius(settings.sigma, settings.n, settings.alpha)
        by_radius = {f"{eps:g}": SmoothedFigures(**smoothing_metrics(records, threat, eps,
                                                                     dimension, largest))
                     for eps in sorted({threat.eps, *radii})}
        return cls(**certified_metrics(records, threat.eps), sigma=settings.sigma,
                   sigma_train=sigma_train, n=settings.n, alpha=settings.alpha,
                   samples=len(certificates), max_certifiable_l2_radius=largest,
                   mean_seconds_per_sample=float(certificates.seconds.mean()),
                   by_radius=by_radius)


@dataclass
class AttackComparison(Result):
    """A composition, or a model attacked whole, under an attack against its count
    (``evaluate.compare_with_attack``): both robust accuracies on the first ``samples`` test
    points, and where they disagree (nothing counted, for a model attacked whole)."""

    samples: int
    robust_accuracy: float
    robust_accuracy_interval: list[float]
    counted_robust_accuracy: float | None
    difference_points: float | None
    counted_robust_accuracy_interval: list[float] | None = _optional()
    counted_but_broken: int | None = _optional()
    counted_but_broken_indices: list[int] | None = _optional()
    held_but_not_counted: int | None = _optional()
    natural_agrees_with_count: bool | None = _optional()
    attack: str | None = _optional()
    # which candidate of the adaptive attack broke each input first
    candidates: dict[str, int] | None = _optional()
    sanity: dict[str, Any] | None = _optional()


@dataclass
class AdaptiveComparison(AttackComparison):
    """A composition under the adaptive attack against its count, with the sanity checks
    where they ran (``evaluate.sanity``; ``None`` is written where they did not)."""

    sanity: dict[str, Any] | None = None


@dataclass
class CurvePoint(Result):
    """One ``κ`` of an operating curve (``evaluate.operating_points.operating_curve``): the
    composition's natural accuracy, sound robust (or certified) accuracy and selection rate
    there, and its paired comparison with the core: ``lost`` (inputs only the core answers
    rightly) and ``gained`` (only the composition) of ``samples``."""

    kappa: float
    natural_accuracy: float
    robust_accuracy: float
    selection_rate: float
    lost: int
    gained: int
    samples: int

    def figures(self) -> dict[str, Any]:
        """This point's figures alone, to make a point of a kind that adds to them."""
        return {item.name: getattr(self, item.name) for item in fields(CurvePoint)
                if item.name != "extras"}


@dataclass
class ChosenPoint(CurvePoint):
    """The point an accuracy target chose on a curve: whether it meets the target (else it is
    the most accurate), against the core's natural accuracy and the drop allowed."""

    meets_target: bool
    core_accuracy: float
    max_accuracy_drop: float | None


@dataclass
class OperatingPoint(Result):
    """``κ`` chosen for an accuracy target on validation data: the validation curve, the point
    chosen on it, and the test curve beside."""

    validation_curve: list[CurvePoint]
    chosen: ChosenPoint
    test_curve: list[CurvePoint] | None = _optional()
    nested: ClassVar[dict[str, Any]] = {"validation_curve": [CurvePoint], "chosen": ChosenPoint,
                                        "test_curve": [CurvePoint]}

    @property
    def kappa(self) -> float:
        return self.chosen.kappa


@dataclass
class RobustnessGivenUp(Result):
    """The most robust point of a curve, where the chosen one keeps less than
    ``operating_points.LITTLE_ROBUSTNESS`` of its robust accuracy (``share_kept``)."""

    kappa: float
    robust_accuracy: float
    share_kept: float


@dataclass
class Confirmation(CurvePoint):
    """A candidate's point on the confirming part of the validation split, at the ``κ`` chosen
    on the choosing part: the one-sided upper bound on its accuracy drop against the core
    (``None`` where the candidate missed the target on the choosing part) and whether it is
    within the target."""

    drop_upper_bound: float | None
    accepted: bool


@dataclass
class CandidateChoice(Result):
    """A candidate recipe's ``κ``, chosen on the choosing points, and its confirmation."""

    kappa: float
    choosing: ChosenPoint
    confirming: Confirmation
    nested: ClassVar[dict[str, Any]] = {"choosing": ChosenPoint, "confirming": Confirmation}


@dataclass
class RecipeChoice(Result):
    """The pair (recipe, ``κ``) chosen on one validation part and confirmed on another
    (``evaluate.operating_points.choose_recipe``): every candidate's choice, how many
    candidates and pairs were tried and confirmed, at what confidence, and the chosen candidate
    (``None`` where none was accepted: then the ``closest``)."""

    candidates: dict[str, CandidateChoice]
    tried: int
    robustness_given_up: RobustnessGivenUp | None
    pairs: int
    confirmed: int
    pair_confidence: float
    confidence: float
    max_accuracy_drop: float
    core_accuracy: float
    chosen: str | None
    closest: str | None
    nested: ClassVar[dict[str, Any]] = {"candidates": (CandidateChoice,),
                                        "robustness_given_up": RobustnessGivenUp}

    @property
    def picked(self) -> str:
        """The chosen candidate, else the closest."""
        picked = self.chosen if self.chosen is not None else self.closest
        assert picked is not None
        return picked


@dataclass
class SearchCandidate(Result):
    """A candidate of a search: its name, its recipe's overrides and its best epoch."""

    name: str
    overrides: dict[str, Any]
    best_epoch: int


@dataclass
class PairedComparison(Result):
    """Two compositions' sound robust accuracy on the same ``samples`` test points (``first``,
    ``second``), the inputs only one of them holds, and the two-sided exact McNemar test's
    p-value (``test`` names it)."""

    samples: int
    first: float
    second: float
    only_first: int
    only_second: int
    p_value: float
    test: str


@dataclass
class SearchTest(CurvePoint):
    """The picked pair on the test points, after the choice: its point, the candidate and
    whether it was chosen (else it is the closest), the core's figures, the exact McNemar test
    of its natural accuracy against the core's, and its paired sound robust comparison with
    every composition of the experiment with the same core and selector (``against``, by
    label)."""

    candidate: str
    chosen: bool
    core_natural_accuracy: float
    core_robust_accuracy: float
    accuracy_p_value: float
    accuracy_test: str
    against: dict[str, PairedComparison]
    nested: ClassVar[dict[str, Any]] = {"against": (PairedComparison,)}


@dataclass
class SearchResult(Result):
    """A recipe search (``pipeline.search``): the selector, the grid's size, the candidates
    tried, the choice, every candidate's curve by split (``choose``, ``confirm``, ``test``),
    each branch's and the core's figures alone by split, and the test figures of the picked
    pair."""

    selector: str
    grid_size: int
    candidates: list[SearchCandidate]
    choice: RecipeChoice
    curves: dict[str, dict[str, list[CurvePoint]]]
    branches: dict[str, dict[str, dict[str, float]]]
    core: dict[str, dict[str, float]]
    test: SearchTest
    nested: ClassVar[dict[str, Any]] = {"candidates": [SearchCandidate], "choice": RecipeChoice,
                                        "curves": (([CurvePoint],),), "test": SearchTest}


@dataclass
class CountedResult(Result):
    """A composition counted from attack records in the sound form
    (``evaluate.composition_metrics``), at the ``κ`` it deploys where it has one; the exact
    figures on a grid beside, for two-dimensional data."""

    natural_accuracy: float
    robust_accuracy: float
    robust_inaccuracy: float
    non_robust: float
    selection_rate: float
    selected_accuracy: float | None
    stable_rate: float | None
    unattacked_robust_accuracy: float
    routes: dict[str, dict[str, int]]
    kappa: float | None = _optional()
    exact: dict[str, float] | None = _optional()


@dataclass
class CompositionResult(CountedResult):
    """A composition on the test points: its count, the adaptive attack against it (``None``
    where none ran), and how its knob was set: ``κ`` chosen for an operating point, or a
    score's threshold (with the area under its risk–coverage curve)."""

    adaptive: AdaptiveComparison | None = None
    operating_point: OperatingPoint | None = _optional()
    threshold: float | None = _optional()
    aurc: float | None = _optional()
    nested: ClassVar[dict[str, Any]] = {"adaptive": AdaptiveComparison,
                                        "operating_point": OperatingPoint}


@dataclass
class MixingResult(Result):
    """The mixing baseline, one model: its natural accuracy, and where it was attacked (on the
    adaptive subset) its partition and the attack's figures."""

    natural_accuracy: float
    robust_accuracy: float | None = _optional()
    robust_inaccuracy: float | None = _optional()
    non_robust: float | None = _optional()
    adaptive: AttackComparison | None = _optional()
    nested: ClassVar[dict[str, Any]] = {"adaptive": AttackComparison}
    # a mixed model selects nothing, has no routes and no knob of the count's
    selection_rate: ClassVar[None] = None
    selected_accuracy: ClassVar[None] = None
    unattacked_robust_accuracy: ClassVar[None] = None
    routes: ClassVar[None] = None
    exact: ClassVar[None] = None
    operating_point: ClassVar[None] = None
    threshold: ClassVar[None] = None
    aurc: ClassVar[None] = None
    kappa: ClassVar[None] = None


@dataclass
class CertifiedCompositionResult(Result):
    """A composition counted from certificates: composed natural and certified accuracy (with
    its 95% interval), certified robust inaccuracy, selection and stability rates, and the
    selection taken on the clean input beside them; ``κ`` chosen for an operating point where
    it was."""

    natural_accuracy: float
    core_natural_accuracy: float
    certified_accuracy: float
    certified_accuracy_interval: list[float]
    certified_robust_inaccuracy: float
    certified_accuracy_if_selector_not_attacked: float
    selection_rate: float
    selected_accuracy: float | None
    stable_rate: float
    kappa: float
    samples: int
    certified: bool = True
    operating_point: OperatingPoint | None = _optional()
    nested: ClassVar[dict[str, Any]] = {"operating_point": OperatingPoint}


@dataclass
class AutoAttackCheck(Result):
    """Robust accuracy at eps by the records' check (of the evaluation attack ``attack``) and by
    full AutoAttack on the first test points of one model, and the inputs where AutoAttack found
    a flip the records' check missed (each a witness that the check is weaker there): at eps
    (``missed_flips``) and at every radius of the records (``missed_flips_by_radius``)."""

    attack: str
    evaluation: float
    autoattack: float
    difference_points: float
    agree_within_1_point: bool
    missed_flips: list[int]
    missed_flips_by_radius: dict[str, list[int]] | None = None

    def to_json(self) -> dict[str, Any]:
        by_radius = ({} if self.missed_flips_by_radius is None
                     else {"missed_flips_by_radius": self.missed_flips_by_radius})
        return {"missed_flips": self.missed_flips, self.attack: self.evaluation,
                "autoattack": self.autoattack, "difference_points": self.difference_points,
                "agree_within_1_point": self.agree_within_1_point, **by_radius, **self.extras}

    @classmethod
    def read(cls, data: dict[str, Any], attack: str) -> AutoAttackCheck:
        return cls(attack, data[attack], data["autoattack"], data["difference_points"],
                   data["agree_within_1_point"], data.get("missed_flips", []),
                   data.get("missed_flips_by_radius"))


SplitResults = dict[str, Result]
"""One split's results, by model name and composition label, in the order they were made."""


def counted_split(records: dict[str, Records], compositions: Sequence[CompositionSettings],
                  kappas: dict[str, float], eps: float) -> SplitResults:
    """The attacked models on a split other than the test split, from their ``records``, and the
    compositions counted from those records alone (the kinds counted so:
    ``SelectorKind.attacked_selections``), at the ``κ`` each deploys on the test split
    (``kappas``; 1 where it has none). A composition with a smoothed model (certified on the
    test split only, no records) is not counted here."""
    results: SplitResults = {name: ModelResult.of(r, eps) for name, r in records.items()}
    for composition in compositions:
        if not {*composition.branches, composition.core} <= records.keys():
            continue
        kappa = kappas.get(composition.label, 1.0)
        parts = [records[name] for name in composition.branches]
        selections = SELECTOR_KINDS[composition.selector].attacked_selections(parts, eps, kappa)
        if selections is None:
            continue
        counted = composition_metrics(parts, records[composition.core], selections)[0]
        results[composition.label] = CountedResult(**counted, kappa=kappa)
    return results


@dataclass
class ExperimentResults:
    """What ``robustgate run`` found: the results of the test split (``test``), of the training
    split where evaluated (``train``), the AutoAttack check by model, the recipe searches'
    results (``pipeline.search``, by search name), the evaluation attack's name, eps, the
    number of test points and the wall time."""

    test: SplitResults
    autoattack_check: dict[str, AutoAttackCheck]
    attack: str
    eps: float
    samples: int
    wall_time_s: float
    train: SplitResults | None = None
    searches: dict[str, SearchResult] = field(default_factory=dict)

    def split(self, name: str) -> SplitResults:
        """The results of split ``name`` (``test`` or ``train``)."""
        results = self.test if name == "test" else self.train
        if results is None:
            raise ValueError(f"the run evaluated no {name!r} split")
        return results

    def to_json(self) -> dict[str, Any]:
        splits = {"test": self.test, **({} if self.train is None else {"train": self.train})}
        return {**{name: {label: result.to_json() for label, result in results.items()}
                   for name, results in splits.items()},
                "autoattack_check": {name: check.to_json()
                                     for name, check in self.autoattack_check.items()},
                **({"searches": _plain(self.searches)} if self.searches else {}),
                "attack": self.attack, "eps": self.eps, "samples": self.samples,
                "wall_time_s": self.wall_time_s}

    @classmethod
    def from_json(cls, data: dict[str, Any], config: ExperimentConfig) -> ExperimentResults:
        """The results that ``metrics.json`` of a run of ``config`` holds."""
        def read(values: dict[str, Any], split: str) -> SplitResults:
            return {label: result_type(config, label, split).from_json(figures)
                    for label, figures in values.items()}

        return cls(read(data["test"], "test"),
                   {name: AutoAttackCheck.read(check, data["attack"])
                    for name, check in data["autoattack_check"].items()},
                   data["attack"], data["eps"], data["samples"], data["wall_time_s"],
                   read(data["train"], "train") if "train" in data else None,
                   {name: SearchResult.from_json(search)
                    for name, search in data.get("searches", {}).items()})


def result_type(config: ExperimentConfig, name: str, split: str = "test") -> type[Result]:
    """The type of the result named ``name`` (a model or a composition's label) on ``split`` of
    a run of ``config``: a composition's is its kind's (``SelectorKind.result_type``) on the test
    split, its count alone on another."""
    if name in config.models:
        return SmoothedModelResult if config.models[name].smoothing is not None else ModelResult
    for composition in config.compositions:
        if composition.label == name:
            return (SELECTOR_KINDS[composition.selector].result_type if split == "test"
                    else CountedResult)
    raise ValueError(f"{name!r} is neither a model nor a composition of the run's config")
