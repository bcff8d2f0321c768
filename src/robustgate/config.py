"""Experiment configurations: explicit, validated, and written beside every result."""

from __future__ import annotations

import copy
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from robustgate.registry import CERTIFICATE_METHODS, SELECTOR_KINDS
from robustgate.threat import ThreatModel

OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class TrainConfig:
    """``optimizer`` ``sgd`` (with ``momentum``) or ``adam`` (its default betas; ``momentum``
    unused), both with (L2-coupled) weight decay; the learning rate is multiplied by
    ``lr_drop_factor`` from epoch ``lr_drop_at · epochs`` on; ``seed`` fixes the batch order."""

    optimizer: str = "sgd"
    epochs: int = 20
    batch_size: int = 10
    lr: float = 0.03
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_drop_at: float = 0.75
    lr_drop_factor: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(
                f"epochs and batch_size must be >= 1, got epochs={self.epochs}, "
                f"batch_size={self.batch_size}"
            )
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got lr={self.lr}")
        if not (0 <= self.momentum < 1 and self.weight_decay >= 0):
            raise ValueError(
                f"need 0 <= momentum < 1 and weight_decay >= 0, got momentum={self.momentum}, "
                f"weight_decay={self.weight_decay}"
            )
        if not (0 <= self.lr_drop_at <= 1 and 0 < self.lr_drop_factor <= 1):
            raise ValueError(
                f"need 0 <= lr_drop_at <= 1 and 0 < lr_drop_factor <= 1, got "
                f"lr_drop_at={self.lr_drop_at}, lr_drop_factor={self.lr_drop_factor}"
            )


def check_name(name: str) -> str:
    """A name from a config (an experiment's, a model's) becomes a file or directory name inside
    its run directory: it must be one plain path component."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a name must be a non-empty string, got {name!r}")
    if any(bad in name for bad in ("/", "\\", "\0")) or name in (".", "..") or Path(
            name).is_absolute():
        raise ValueError(f"{name!r} is not a name: a name may not hold a path separator, be '.' "
                         "or '..', or be absolute (it becomes a directory inside the run "
                         "directory); e.g. 'mnist-era'")
    return name


Name = Annotated[str, AfterValidator(check_name)]
# a noise level or radius of a study's grid: a finite number > 0 (>= 0 where zero means none)
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]


def _with_zero(values: list[float]) -> list[float]:
    """A study's grid of training noise, which must hold 0: the reference it is compared with."""
    if 0 not in values:
        raise ValueError(f"must hold 0, the reference without training noise, got {values}")
    return values


WithZero = AfterValidator(_with_zero)


class _Strict(BaseModel):
    """Every config section: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ThreatSettings(_Strict):
    norm: Literal["linf", "l2"] = "linf"
    eps: float = Field(0.1, ge=0)

    def build(self) -> ThreatModel:
        return ThreatModel(self.norm, self.eps)


class AttackSettings(_Strict):
    """An attack: ``pgd`` (training and validation), or for evaluation ``apgd-ce``, ``apgd-t``,
    ``square``, ``autoattack``. ``relative_step``, ``objective`` and ``target_classes`` apply
    to ``pgd`` only (``attacks.PGD``)."""

    name: Literal["pgd", "apgd-ce", "apgd-t", "square", "autoattack"] = "pgd"
    steps: int = Field(10, ge=1)
    relative_step: float = Field(0.25, gt=0)
    restarts: int = Field(1, ge=1)
    objective: Literal["margin", "ce"] = "margin"
    target_classes: int = Field(3, ge=0)


# The evaluation attack's defaults, for the experiment's evaluation, ``robustgate evaluate``
# and ``attacks.make_attack``: ten times the training attack's steps, each a tenth of eps (the
# training attack, ``AttackSettings()``, takes ten steps of a quarter of eps).
EVALUATION_ATTACK = AttackSettings(steps=100, relative_step=0.1)
# measured defaults (benchmarks/defaults.py, one CPU thread; README): noisy inputs per forward
# pass of a smoothed model, and inputs per batch of bound propagation
NOISE_BATCH = 400
BOUND_BATCH = 250



class DataSettings(_Strict):
    """``data.load_dataset``'s arguments; ``n`` points per split for the synthetic sets (1000
    by default), ``limit_train`` the first training points only; ``verify: false`` loads data
    files that are not byte-identical to the canonical ones (another compression, a re-export),
    checked by their structure only."""

    name: str
    root: str | None = None
    path: str | None = None
    download: bool = False
    verify: bool = True
    validation_size: int | float = Field(0, ge=0)
    limit_train: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1)


class ModelSettings(_Strict):
    """``architecture`` names one of robustgate's (``models.ARCHITECTURES``) or an ``nn.Module``
    subclass in the user's code, ``"package.module:Name"`` (imported: naming it in a config
    trusts it). ``init`` names a checkpoint to fine-tune (a robustgate checkpoint, or a plain
    state dict of this architecture, with ``init_keys: robustbench`` one with RobustBench's key
    names, ``models.zoo``), or ``@name`` for another model of the same experiment."""

    architecture: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    init: str | None = None
    init_keys: Literal["robustgate", "robustbench"] = "robustgate"
    last_layer_only: bool = False


class LossSettings(_Strict):
    name: str = "standard"
    params: dict[str, Any] = Field(default_factory=dict)
    threat: ThreatSettings = Field(default_factory=ThreatSettings)
    attack: AttackSettings = Field(default_factory=AttackSettings)


class OptimizerSettings(_Strict):
    """``config.TrainConfig``: the optimizer (``sgd`` with momentum, or ``adam``), epochs, batch
    size, learning rate and its one drop, weight decay."""

    optimizer: Literal["sgd", "adam"] = "sgd"
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    lr_drop_at: float = Field(0.75, ge=0, le=1)
    lr_drop_factor: float = Field(0.1, gt=0, le=1)

    def build(self, seed: int) -> TrainConfig:
        return TrainConfig(seed=seed, **self.model_dump())


class SelectionSettings(_Strict):
    """Which validated epoch is kept as ``best``: the best ``metric`` (``goal`` max or min),
    among the epochs whose ``within`` metric is at most ``tolerance`` below its best value
    (e.g. lowest robust inaccuracy at equal robust accuracy). Ties go to the later epoch."""

    metric: Literal["natural_accuracy", "robust_accuracy", "robust_inaccuracy", "non_robust",
                    "certified_accuracy", "certified_robust_inaccuracy"] = "robust_accuracy"
    goal: Literal["max", "min"] = "max"
    within: Literal["natural_accuracy", "robust_accuracy", "certified_accuracy"] | None = None
    tolerance: float = Field(0.01, ge=0)


class SmoothingSettings(_Strict):
    """Certification by randomized smoothing (``certify.Smooth.certify``): smoothing noise
    ``sigma`` (set apart from the ``sigma_train`` a model was trained with), ``n0`` selection and
    ``n`` estimation draws, level ``alpha``, ``batch_size`` noisy inputs per forward pass and
    ``seed``. Radii are L2; a Linf threat is certified through the L2 ball that covers it.
    ``votes``: the draws of the majority vote the model answers with when deployed as a core
    (``Smooth.forward``), which its count in a composition allows for (``certify.vote_radius``)."""

    sigma: float = Field(gt=0)
    n0: int = Field(100, ge=1)
    n: int = Field(10_000, ge=1)
    alpha: float = Field(0.001, gt=0, lt=1)
    batch_size: int = Field(NOISE_BATCH, ge=1)
    seed: int = 0
    votes: int = Field(1000, ge=1)

    @model_validator(mode="after")
    def _selection_within_estimation(self) -> SmoothingSettings:
        if self.n0 > self.n:
            raise ValueError(f"n0={self.n0} selection draws exceed the n={self.n} estimation "
                             "draws")
        return self


def _bound_method(name: str) -> str:
    """A bound-propagation method of ``registry.CERTIFICATE_METHODS``."""
    if not CERTIFICATE_METHODS[name].bound_propagation:
        names = [m.name for m in CERTIFICATE_METHODS.values() if m.bound_propagation]
        raise ValueError(f"{name!r} is no bound-propagation method; choose from {names}")
    return name


BoundMethod = Annotated[str, AfterValidator(_bound_method)]


class BoundSettings(_Strict):
    """Certification by bound propagation (``certify.certify_bounds``) on the first
    ``evaluation.certify_limit`` test points, by every method of ``methods`` (side by side; IBP
    always, which counts a bound selector's stability), ``batch_size`` inputs at a time."""

    methods: list[BoundMethod] = Field(
        default_factory=lambda: ["ibp"], min_length=1)
    batch_size: int = Field(BOUND_BATCH, ge=1)

    @field_validator("methods")
    @classmethod
    def _with_interval_bounds(cls, methods: list[str]) -> list[str]:
        return ["ibp", *sorted(set(methods) - {"ibp"})]


class ValidationSettings(_Strict):
    """Validation of every ``every``-th epoch on the first ``limit`` validation points at ``eps``
    in ``norm`` (the loss's threat's by default): by ``attack``, or, with ``smoothing``, by
    certifying the smoothed model (``certified_*`` metrics, a cheaper ``n`` than the test's is
    usual)."""

    every: int = Field(1, ge=1)
    eps: float | None = Field(None, ge=0)
    norm: Literal["linf", "l2"] | None = None
    attack: AttackSettings = Field(
        default_factory=lambda: AttackSettings(steps=20, relative_step=0.1)
    )
    limit: int | None = Field(1000, ge=1)
    smoothing: SmoothingSettings | None = None
    select: SelectionSettings = Field(default_factory=SelectionSettings)


class AugmentationSettings(_Strict):
    """Data augmentation of every training batch, on the training device, inside the training
    loop (``train.augmentation``, by kornia): ``affine``, small rotations of up to ``degrees``,
    shifts of up to ``translate`` of the size and scalings within ``scale``, for digit-like
    data; ``crop_flip``, a random crop after zero ``padding`` and a horizontal flip, for
    CIFAR-shaped data; ``randaugment`` (``operations`` per image at ``magnitude`` of 30) and
    ``autoaugment`` (the CIFAR-10 policy), for RGB data. Drawn from the epoch's seed, so that an
    interrupted run resumes to the same weights."""

    name: Literal["affine", "crop_flip", "randaugment", "autoaugment"]
    degrees: float = Field(10.0, ge=0, le=180)
    translate: float = Field(0.1, ge=0, lt=1)
    scale: tuple[float, float] = (0.9, 1.1)
    padding: int = Field(4, ge=0)
    operations: int = Field(2, ge=1)
    magnitude: int = Field(10, ge=0, le=30)

    @field_validator("scale")
    @classmethod
    def _check_scale(cls, scale: tuple[float, float]) -> tuple[float, float]:
        if not 0 < scale[0] <= scale[1]:
            raise ValueError(f"scale is a range 0 < low <= high, got {list(scale)}")
        return scale


class TrainSpec(_Strict):
    """One model to train: architecture (and checkpoint to start from), loss, optimizer, data
    augmentation and validation; with ``smoothing``, the model is deployed smoothed and
    evaluated by certifying it (``certify.Smooth``) instead of attacking it; with ``bounds``, it
    is also certified by bound propagation."""

    model: ModelSettings
    loss: LossSettings = Field(default_factory=LossSettings)
    train: OptimizerSettings = Field(default_factory=OptimizerSettings)
    augmentation: AugmentationSettings | None = None
    validation: ValidationSettings | None = None
    smoothing: SmoothingSettings | None = None
    bounds: BoundSettings | None = None


class TrainRunConfig(TrainSpec):
    """``robustgate train CONFIG.yaml``: one model on one data set."""

    name: Name
    seed: int = 0
    data: DataSettings


class EvaluationSettings(_Strict):
    attack: AttackSettings = Field(default_factory=EVALUATION_ATTACK.model_copy)
    # the check behind the records a count leans on (``attacks.records_check``): ``strong``
    # raises ``attack`` to margin PGD with restarts, then APGD-CE and APGD-T (or to AutoAttack's
    # standard version); ``attack`` keeps it as configured (cheaper)
    records_check: Literal["strong", "attack"] = "strong"
    threat: ThreatSettings = Field(default_factory=ThreatSettings)
    limit: int | None = Field(None, ge=1)
    batch_size: int = Field(500, ge=1)
    # the records cross-checked against AutoAttack's standard version on the first
    # ``autoattack_check`` test points, at every radius they hold (``evaluate.cross_check``)
    autoattack_check: int = Field(100, ge=0)
    # certified models are certified on the first ``certify_limit`` of the evaluated test points
    # (at most ``limit`` of them), summarized at ``certified_radii`` (in the threat's norm; Linf
    # through the covering L2 radius) and eps
    certify_limit: int | None = Field(500, ge=1)
    certified_radii: list[float] = Field(default_factory=list)
    # the splits evaluated (the test split always; ``train`` beside it: the models and the
    # robustness-selector compositions, counted from the records of that split)
    splits: list[Literal["train", "test"]] = Field(default_factory=lambda: ["test"])
    # for two-dimensional data: the robustness-selector compositions' exact natural and robust
    # accuracy, on a grid of this spacing over the domain (``evaluate.Grid``; Linf threats)
    exact_grid: float | None = Field(None, gt=0, lt=1)

    @field_validator("splits")
    @classmethod
    def _with_test(cls, splits: list[str]) -> list[str]:
        return [split for split in ("train", "test") if split in {*splits, "test"}]

    @model_validator(mode="after")
    def _exact_for_linf(self) -> EvaluationSettings:
        if self.exact_grid is not None and self.threat.norm != "linf":
            raise ValueError(f"exact_grid computes Linf balls on a grid; the threat is "
                             f"{self.threat.norm}")
        return self

    @field_validator("certified_radii")
    @classmethod
    def _check_radii(cls, radii: list[float]) -> list[float]:
        if any(not radius >= 0 for radius in radii):
            raise ValueError(f"every certified radius must be >= 0, got {radii}")
        return sorted(set(radii))


DEFAULT_KAPPAS = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0)


def _sorted_kappas(kappas: list[float]) -> list[float]:
    """A selector's ``κ`` values: each at least 1, sorted, without repeats."""
    if any(not kappa >= 1 for kappa in kappas):
        raise ValueError(f"every kappa must be >= 1, got {kappas}")
    return sorted(set(kappas))


class OperatingPointSettings(_Strict):
    """Choose the selector's ``κ`` (robustness or bound selector) on validation data among
    ``kappas``: the highest sound robust accuracy (certified accuracy, for the bound selector)
    whose composed natural accuracy is at most ``max_accuracy_drop`` below the core's (0: no
    lower than the core; ``None``: the highest sound robust accuracy)."""

    max_accuracy_drop: float | None = Field(0.0, ge=0)
    kappas: list[float] = Field(default_factory=lambda: list(DEFAULT_KAPPAS), min_length=1)

    _check_kappas = field_validator("kappas")(_sorted_kappas)


def _names(names: Iterable[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    *most, last = names
    return f"{', '.join(most)} and {last}" if most else last


def _selector_kind(name: str) -> str:
    """A selector's name: a kind of ``registry.SELECTOR_KINDS``."""
    SELECTOR_KINDS[name]  # refuses an unknown name, listing the kinds
    return name


def _check_options(settings: BaseModel, kind: Any) -> None:
    """Refuse a setting that another selector kind owns (``SelectorKind.options``), given away
    from its default; settings without that field (a search has no deployed form) pass."""
    fields = type(settings).model_fields
    for other in SELECTOR_KINDS.values():
        for option in other.options:
            if option not in fields:
                continue
            given = getattr(settings, option)
            if option not in kind.options and given != fields[option].default:
                owners = _names(k.name for k in SELECTOR_KINDS.values() if option in k.options)
                raise ValueError(f"{option} is the {owners} selector's")


class CompositionSettings(_Strict):
    """``branch`` (or a chain of branches, each with a robustness selector) composed with
    ``core``. ``selector``: ``robustness`` (the branch robust on ``B(x', κ·eps)`` around the input
    ``x'`` it sees, ``κ = kappa``, or chosen on validation data for an ``operating_point``), a
    confidence measure (``softmax_response``, ``entropy``), a learned ``gate``, or ``mixing``
    (the soft mixing baseline; it never abstains). Thresholds (and the mixing weight) are chosen
    on validation data for ``coverage`` or ``selective_accuracy`` when given, else to match the
    composed natural accuracy of the robustness selector at ``κ = 1`` on the same branch.
    ``smoothing`` (a smoothed branch, certified on ``B(x', κ·eps)``, ``κ = kappa``) and
    ``bounds`` (the branch certified on ``B(x', κ·eps)`` by ``bound_method``, ``κ = kappa`` or
    chosen on validation data for an ``operating_point``; a branch with ``bounds`` settings) give
    certified compositions, counted on the certified test points. ``cascade`` (robustness): the
    selector certifies the branch first (the bound stages that pay on the validation data) and
    attacks only what they leave (``select.Cascade``). ``sequential`` (smoothing): the selector
    draws noise in rounds and stops once a sequential test decides
    (``certify.sequential_select``)."""

    branch: str | list[str]
    core: str
    selector: str = "robustness"
    bound_method: BoundMethod = "ibp"
    cascade: bool = False
    sequential: bool = False
    coverage: float | None = Field(None, gt=0, le=1)
    selective_accuracy: float | None = Field(None, gt=0, le=1)
    kappa: float = Field(1.0, ge=1)
    operating_point: OperatingPointSettings | None = None

    _known_selector = field_validator("selector")(_selector_kind)

    @model_validator(mode="after")
    def _one_knob(self) -> CompositionSettings:
        kind = SELECTOR_KINDS[self.selector]
        if len(self.branches) > 1 and not kind.chains:
            raise ValueError(f"the {self.selector} selector composes one branch: give no chain "
                             "with it")
        if kind.takes_kappa and self.operating_point and not kind.chooses_operating_point:
            raise ValueError(f"the {self.selector} selector composes at a given kappa: give no "
                             "operating_point with it")
        _check_options(self, kind)
        if not kind.takes_kappa and (self.kappa != 1 or self.operating_point):
            owners = _names(k.name for k in SELECTOR_KINDS.values() if k.takes_kappa)
            raise ValueError(f"kappa and operating_point are the {owners} selectors'; the "
                             f"{self.selector} selector takes neither")
        if self.operating_point is not None and (self.kappa != 1 or len(self.branches) > 1):
            raise ValueError("operating_point chooses kappa for one branch: give no kappa and "
                             "no chain with it")
        return self

    @property
    def branches(self) -> list[str]:
        return [self.branch] if isinstance(self.branch, str) else list(self.branch)

    @property
    def kappas(self) -> list[float]:
        """The ``κ`` the composition may deploy (several where an operating point is chosen);
        none for the selectors that take no ``κ``."""
        if not SELECTOR_KINDS[self.selector].takes_kappa:
            return []
        return self.operating_point.kappas if self.operating_point else [self.kappa]

    @property
    def label(self) -> str:
        chain = "→".join([*self.branches, self.core])
        knob = None
        if self.operating_point is not None:
            drop = self.operating_point.max_accuracy_drop
            target = "most robust" if drop is None else f"accuracy ≥ core − {100 * drop:g} pt"
            knob = f"operating point: {target}"
        elif self.kappa != 1:
            knob = f"κ = {self.kappa:g}"
        parts = [part for part in (SELECTOR_KINDS[self.selector].label(self), knob) if part]
        return f"{chain} [{', '.join(parts)}]" if parts else chain


class GateSettings(_Strict):
    """The learned gate: a two-class network (the branch's architecture and arguments unless
    given) trained on ``share`` of the calibration data to predict where the branch is robust
    (at eps, where the robustness selector checks) and accurate."""

    architecture: str | None = None
    arguments: dict[str, Any] | None = None
    share: float = Field(0.6, gt=0, lt=1)
    train: OptimizerSettings = Field(
        default_factory=lambda: OptimizerSettings(epochs=10, batch_size=64, lr=0.05)
    )


class MixingSettings(_Strict):
    """The robust model's logits transform of the mixing baseline (``models.mixing``), and the
    ``weights`` among which its mixing weight is chosen (``steps`` + 1 evenly spaced in
    [0, 1])."""

    scale: float = Field(1.0, gt=0)
    power: float = Field(1.0, gt=0)
    shift: float | None = None
    steps: int = Field(100, ge=1)

    @property
    def weights(self) -> list[float]:
        return [i / self.steps for i in range(self.steps + 1)]


class CalibrationSettings(_Strict):
    """Validation data for thresholds, the gate and the mixing weight (first ``limit`` points of
    the validation split), and the tolerance of a match to the robustness selector."""

    limit: int | None = Field(5000, ge=2)
    gate: GateSettings = Field(default_factory=GateSettings)
    mixing: MixingSettings = Field(default_factory=MixingSettings)
    # a selector calibrated to the robustness selector's composed natural accuracy counts as
    # matched on the test points within this many (fractional) points of it
    match_tolerance: float = Field(0.003, ge=0, lt=1)


class AdaptiveSettings(_Strict):
    """The adaptive attack on every composition, on the first ``limit`` test points (0: off);
    the mixing baseline is attacked as one model with the evaluation attack instead. The other
    keys are ``evaluate.AdaptiveAttack``'s parameters."""

    limit: int = Field(1000, ge=0)
    steps: int = Field(50, ge=1)
    relative_step: float = Field(0.1, gt=0)
    restarts: int = Field(2, ge=1)
    target_classes: int = Field(2, ge=0)
    steers: list[float] = Field(default_factory=lambda: [1.0, 10.0], min_length=1)
    saturation: float = Field(4.0, gt=0)
    # the sanity checks of evaluate.sanity on the first ``sanity`` test points (0: off)
    sanity: int = Field(0, ge=0)
    square_queries: int = Field(1000, ge=1)

    def attack_options(self) -> dict[str, Any]:
        """The keyword arguments of ``evaluate.AdaptiveAttack`` these settings give."""
        return self.model_dump(exclude={"limit", "sanity", "square_queries"})


NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


def _set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    """Set ``values[a][b][c] = value`` for ``key`` ``a.b.c`` (the inner mappings created where
    missing, as in a loss's ``params``)."""
    *path, last = key.split(".")
    for part in path:
        inner = values.get(part)
        if inner is None:
            inner = values[part] = {}
        if not isinstance(inner, dict):
            raise ValueError(f"grid key {key!r}: {part!r} is not a section of the model spec")
        values = inner
    values[last] = value


class SearchSettings(_Strict):
    """An operating point over training (``pipeline.search``): the branch's recipe searched for
    its composition with ``core``. Every candidate is ``recipe`` (a model spec, usually a
    fine-tuning: ``model.init``) with one combination of the ``grid``'s values (dotted keys of
    the spec, e.g. ``loss.params.beta: [0.5, 1, 2]``, ``augmentation: [null, {name: affine}]``);
    each is trained, keeps its own ``validation.select`` epoch, and is composed with the core at
    every ``κ`` of ``kappas`` under ``selector`` (``robustness``; ``bounds`` by ``bound_method``,
    the recipe then needs ``bounds`` settings; ``smoothing``, the recipe then needs
    ``smoothing`` settings, e.g. a grid over ``cra``'s ``loss.params.beta``).

    The validation split is cut in two disjoint parts. Its first ``choose_size`` points choose:
    each candidate's epoch, its ``κ`` (the highest sound robust accuracy whose composed natural
    accuracy is at most ``max_accuracy_drop`` below the core's) and the candidates' ranking. The
    next ``confirm_size`` points (the rest by default) confirm: a candidate's pair is accepted
    only where the one-sided upper confidence bound on its accuracy drop against the core,
    paired on the confirming points, is at most ``max_accuracy_drop``, at ``confidence`` over all
    the pairs confirmed. The accepted pair of highest sound robust accuracy on the choosing
    points wins. Test data never enters the choice.

    Without ``trials`` every candidate of the grid is trained; with it, that many are sampled
    by Optuna's TPE sampler (seeded; the study kept in SQLite beside the candidates), for a grid
    too large to train whole."""

    name: str = Field(pattern=NAME_PATTERN)
    core: str
    recipe: TrainSpec
    grid: dict[str, list[Any]] = Field(min_length=1)
    selector: str = "robustness"
    bound_method: BoundMethod = "ibp"
    kappas: list[float] = Field(default_factory=lambda: [1.0], min_length=1)
    max_accuracy_drop: float = Field(gt=0, lt=1)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    choose_size: int = Field(ge=1)
    confirm_size: int | None = Field(None, ge=1)
    trials: int | None = Field(None, ge=1)

    _check_kappas = field_validator("kappas")(_sorted_kappas)
    _known_selector = field_validator("selector")(_selector_kind)

    @field_validator("grid")
    @classmethod
    def _check_grid(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        empty = [key for key, values in grid.items() if not values]
        if empty:
            raise ValueError(f"every grid key needs at least one value; empty: {empty}")
        return grid

    @model_validator(mode="after")
    def _check_candidates(self) -> SearchSettings:
        kind = SELECTOR_KINDS[self.selector]
        if not kind.searchable:
            raise ValueError(f"the {self.selector} selector is not searched: search under one "
                             f"of {[k.name for k in SELECTOR_KINDS.values() if k.searchable]}")
        for _, spec in self.candidates():  # every candidate a valid model spec, or refused
            problem = kind.refuses(spec, recipe=True)
            if problem is not None:
                raise ValueError(problem)
        _check_options(self, kind)
        return self

    def candidates(self) -> list[tuple[dict[str, Any], TrainSpec]]:
        """Every combination of the grid's values (the first key varying slowest), with the
        recipe it makes."""
        combinations: list[dict[str, Any]] = [{}]
        for key, values in self.grid.items():
            combinations = [{**done, key: value} for done in combinations for value in values]
        candidates = []
        for overrides in combinations:
            values = self.recipe.model_dump()
            for key, value in overrides.items():
                _set_dotted(values, key, value)
            try:
                spec = TrainSpec.model_validate(values)
            except ValidationError as error:
                raise ValueError(f"the recipe with {overrides}: {_describe(error)}") from None
            candidates.append((overrides, spec))
        return candidates


class ExperimentConfig(_Strict):
    """``robustgate run CONFIG.yaml``: several models trained on one data set, evaluated with
    one attack, and composed."""

    name: Name
    seed: int = 0
    data: DataSettings
    models: dict[Name, TrainSpec]
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    compositions: list[CompositionSettings] = Field(default_factory=list)
    calibration: CalibrationSettings = Field(default_factory=CalibrationSettings)
    adaptive: AdaptiveSettings = Field(default_factory=AdaptiveSettings)
    searches: list[SearchSettings] = Field(default_factory=list)

    @field_validator("searches")
    @classmethod
    def _distinct_searches(cls, searches: list[SearchSettings]) -> list[SearchSettings]:
        names = [search.name for search in searches]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ValueError(f"every search needs a name of its own; repeated: {repeated}")
        return searches


class DisksSettings(_Strict):
    """The disk problem of Pal & Sulam: a ``size``-pixel square whose class-1 region is a union of
    disks of ``radius`` pixels, centres drawn uniformly ``tries`` times and kept where no kept
    centre lies within the ``(2·radius + gap)`` square around them; ``layouts`` random layouts per
    gap. Noise levels are in pixels."""

    size: int = Field(100, ge=10)
    radius: float = Field(10.0, gt=0)
    gaps: list[NonNegative] = Field(default_factory=lambda: [0.0, 1.0, 2.0, 3.0, 10.0, 20.0],
                                    min_length=1)
    sigmas: list[Positive] = Field(default_factory=lambda: [8.0, 11.0, 14.0], min_length=1)
    sigma_trains: Annotated[list[NonNegative], WithZero] = Field(
        default_factory=lambda: [float(s) for s in range(21)], min_length=1)
    layouts: int = Field(10, ge=2)
    tries: int = Field(10_000, ge=1)


class GaussiansSettings(_Strict):
    """The trained synthetic problems: ``equal`` (two isotropic Gaussians of one covariance, equal
    priors) and ``clusters`` (class 1 a row of small clusters packed ``spacing`` apart, closer
    than the smoothing noise, in a uniform class-0 background). An MLP is trained with the
    ``gaussian`` loss at each ``σ_train = ratio · σ`` (``standard`` at 0) and smoothed by a
    majority vote of ``votes`` noisy copies on ``n_test`` test points."""

    sigmas: list[Positive] = Field(default_factory=lambda: [0.04, 0.06, 0.1], min_length=1)
    ratios: Annotated[list[NonNegative], WithZero] = Field(
        default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0, 1.25], min_length=1)
    n_train: int = Field(4000, ge=10)
    n_test: int = Field(2000, ge=10)
    votes: int = Field(100, ge=1)
    hidden: list[int] = Field(default_factory=lambda: [64, 64])
    train: OptimizerSettings = Field(
        default_factory=lambda: OptimizerSettings(epochs=15, batch_size=50, lr=0.05))
    spacing: float = Field(0.04, gt=0)


class MnistNoiseSettings(_Strict):
    """MNIST: ``SmallCNN`` trained with the ``gaussian`` loss at each ``σ_train = ratio · σ``
    (one model per σ_train, reused across σ), Δ by a majority vote of ``votes`` noisy copies on
    the first ``limit`` test images, and certified accuracy at L2 ``radius`` (``certify``,
    ``n`` draws at level ``alpha``) on the first ``certify_limit``."""

    root: str = "../shared/data/mnist"
    sigmas: list[Positive] = Field(default_factory=lambda: [0.25, 0.5], min_length=1)
    ratios: Annotated[list[NonNegative], WithZero] = Field(
        default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0, 1.25], min_length=1)
    train: OptimizerSettings = Field(
        default_factory=lambda: OptimizerSettings(epochs=3, batch_size=64, lr=0.05))
    limit: int = Field(1000, ge=1)
    votes: int = Field(100, ge=1)
    certify_limit: int = Field(200, ge=1)
    radius: float = Field(0.25, ge=0)
    n: int = Field(10_000, ge=1)
    alpha: float = Field(0.001, gt=0, lt=1)


NOISE_PROBLEMS = ("disks", "gaussians", "mnist")


class NoiseStudyConfig(_Strict):
    """``robustgate study noise``: when does noise-augmented training help a smoothed classifier
    (Pal & Sulam, TMLR 2023)? ``σ_train`` is the training noise and ``σ`` the smoothing noise."""

    name: Name = "noise-study"
    seed: int = 0
    problems: list[Literal["disks", "gaussians", "mnist"]] = Field(
        default_factory=lambda: list(NOISE_PROBLEMS), min_length=1)
    disks: DisksSettings = Field(default_factory=DisksSettings)
    gaussians: GaussiansSettings = Field(default_factory=GaussiansSettings)
    mnist: MnistNoiseSettings = Field(default_factory=MnistNoiseSettings)


def quick_noise_study(problems: list[str] | None = None) -> NoiseStudyConfig:
    """The study's ``--quick`` grid: the synthetic problems in a few minutes on a laptop CPU."""
    return NoiseStudyConfig(
        name="noise-study-quick", problems=problems or ["disks", "gaussians"],
        disks=DisksSettings(gaps=[0.0, 3.0, 20.0], sigmas=[8.0, 14.0],
                            sigma_trains=[0.0, 2.0, 4.0, 6.0, 8.0, 11.0, 14.0], layouts=3,
                            tries=3000),
        gaussians=GaussiansSettings(sigmas=[0.06], ratios=[0.0, 0.5, 1.0], n_train=2000,
                                    n_test=2000, votes=50, hidden=[32, 32],
                                    train=OptimizerSettings(epochs=15, batch_size=50, lr=0.05)),
        mnist=MnistNoiseSettings(sigmas=[0.5], ratios=[0.0, 1.0], limit=200, certify_limit=50,
                                 n=1000, train=OptimizerSettings(epochs=1, batch_size=64,
                                                                 lr=0.05)))


# keys of earlier releases (list positions left out of the path) and what replaced them
RENAMED_KEYS = {
    "evaluation.selector_radius_factor": (
        "removed: a selection's stability radius is derived from the deployed selector, "
        "(κ+1)·eps; give each composition its 'kappa' (or an 'operating_point') instead"),
    "compositions.deployed_radius_factor": "renamed to 'kappa' (the selector checks κ·eps)",
    "adaptive.steer": "renamed to 'steers', a list of selector weights, e.g. [1, 10]",
}


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        location = list(item["loc"])
        key = location[-2] if location[-1:] == ["[key]"] else None
        if key is not None:  # a mapping's key, not its value, is wrong: name it as a key
            location = [*location[:-2], f"key {key!r}"]
        where = ".".join(str(part) for part in location) or "(top level)"
        if item["type"] == "extra_forbidden":
            path = ".".join(str(part) for part in item["loc"] if not isinstance(part, int))
            successor = RENAMED_KEYS.get(path)
            problems.append(f"unknown key '{where}'"
                            + ("" if successor is None else f" ({successor})"))
        elif key is not None or item["type"] in ("missing", "value_error"):
            problems.append(f"'{where}': {item['msg']}")
        else:
            problems.append(f"'{where}': {item['msg']} (got {item['input']!r})")
    return "; ".join(problems)


def parse_config(values: dict[str, Any], kind: type[_Strict], source: str = "config") -> Any:
    """Validate ``values`` as a ``kind``; errors name the offending keys."""
    try:
        return kind.model_validate(values)
    except ValidationError as error:
        raise ValueError(f"{source}: {_describe(error)}") from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that rejects a key given twice in one mapping (plain YAML keeps the
    last one silently, so half of a config would be ignored)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # the base loader rejects it with its position
            if key in seen:
                line = key_node.start_mark.line + 1
                raise ValueError(f"key '{key}' is given twice (line {line})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> Any:
    """The YAML document in the file ``path``; a missing file, a directory, a file that is not
    text or not YAML, and a key given twice are errors that name the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    if not path.is_file():
        raise ValueError(f"{path} is a directory, not a config file; give a YAML file")
    try:
        return yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a text file; give a YAML config") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = "" if mark is None else f" (line {mark.line + 1}, column {mark.column + 1})"
        problem = getattr(error, "problem", None) or str(error)
        raise ValueError(f"{path} is not valid YAML{where}: {problem}") from None
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def apply_overrides(values: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``values`` with each ``KEY=VALUE`` of ``overrides`` set: ``KEY`` a dotted path of keys
    (``data.root``; a number picks a list item, ``compositions.0.kappa``), ``VALUE`` read as
    YAML (``0.2``, ``true``, ``[1, 2]``, or a plain string). Missing mappings on the way are
    created; the result is validated with the config, so a misspelt key is an unknown key."""
    values = copy.deepcopy(values)
    for override in overrides:
        key, separator, text = override.partition("=")
        parts = key.strip().split(".")
        if not separator or not all(parts):
            raise ValueError(f"--set {override!r}: give KEY=VALUE with a dotted key, e.g. "
                             "data.root=/data/mnist")
        try:
            value = yaml.safe_load(text) if text.strip() else text
        except yaml.YAMLError as error:
            raise ValueError(f"--set {override!r}: the value is not YAML: {error}") from None
        node: Any = values
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not (part.isdigit() and int(part) < len(node)):
                    raise ValueError(f"--set {override!r}: '{'.'.join(parts[:depth])}' is a list "
                                     f"of {len(node)}; '{part}' is not one of its positions")
                part = int(part)
            elif not isinstance(node, dict):
                raise ValueError(f"--set {override!r}: '{'.'.join(parts[:depth])}' is "
                                 f"{node!r}, not a mapping of keys")
            if last:
                node[part] = value
            else:
                if isinstance(node, dict) and node.get(part) is None:
                    node[part] = {}
                node = node[part]
    return values


def load_config(path: str | Path, kind: type[_Strict], overrides: Sequence[str] = ()) -> Any:
    """Read a YAML config file, apply ``overrides`` (``KEY=VALUE``, :func:`apply_overrides`) and
    validate it."""
    values = read_yaml(path)
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a config is a mapping of keys, got {type(values).__name__}")
    return parse_config(apply_overrides(values, overrides), kind, str(path))


DEMO_CONFIG = Path(__file__).parent / "configs" / "demo.yaml"


def demo_config(dataset: str | None = None, seed: int | None = None) -> ExperimentConfig:
    """The demo: the experiment config shipped with the package (``configs/demo.yaml``), on
    another two-dimensional data set or seed when given."""
    config = load_config(DEMO_CONFIG, ExperimentConfig)
    values = config.model_dump()
    if dataset is not None:
        values["data"]["name"] = dataset
    if seed is not None:
        values["seed"] = seed
    return parse_config(values, ExperimentConfig)
