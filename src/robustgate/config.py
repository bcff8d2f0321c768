"""Experiment configurations: explicit, validated, and written beside every result."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

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



class DataSettings(_Strict):
    """``data.load_dataset``'s arguments; ``n`` points per split for the synthetic sets (1000
    by default), ``limit_train`` the first training points only."""

    name: str
    root: str | None = None
    path: str | None = None
    download: bool = False
    validation_size: int | float = Field(0, ge=0)
    limit_train: int | None = Field(None, ge=1)
    n: int | None = Field(None, ge=1)


class ModelSettings(_Strict):
    """``init`` names a checkpoint to fine-tune (a robustgate checkpoint, or a plain state dict
    of this architecture), or ``@name`` for another model of the same experiment."""

    architecture: str
    arguments: dict[str, Any] = Field(default_factory=dict)
    init: str | None = None
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
    ``seed``. Radii are L2; a Linf threat is certified through the L2 ball that covers it."""

    sigma: float = Field(gt=0)
    n0: int = Field(100, ge=1)
    n: int = Field(10_000, ge=1)
    alpha: float = Field(0.001, gt=0, lt=1)
    batch_size: int = Field(1000, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _selection_within_estimation(self) -> SmoothingSettings:
        if self.n0 > self.n:
            raise ValueError(f"n0={self.n0} selection draws exceed the n={self.n} estimation "
                             "draws")
        return self


BoundMethod = Literal["ibp", "crown-ibp", "crown", "ibp+crown"]
"""The bound-propagation certificates (``certify.BOUND_METHODS``): interval bounds, CROWN with
interval intermediate bounds, CROWN, and the larger of IBP's and CROWN's bound."""


class BoundSettings(_Strict):
    """Certification by bound propagation (``certify.certify_bounds``) on the first
    ``evaluation.certify_limit`` test points, by every method of ``methods`` (side by side; IBP
    always, which counts a bound selector's stability), ``batch_size`` inputs at a time."""

    methods: list[BoundMethod] = Field(
        default_factory=lambda: ["ibp"], min_length=1)
    batch_size: int = Field(64, ge=1)

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


class TrainSpec(_Strict):
    """One model to train: architecture (and checkpoint to start from), loss, optimizer and
    validation; with ``smoothing``, the model is deployed smoothed and evaluated by certifying
    it (``certify.Smooth``) instead of attacking it; with ``bounds``, it is also certified by
    bound propagation."""

    model: ModelSettings
    loss: LossSettings = Field(default_factory=LossSettings)
    train: OptimizerSettings = Field(default_factory=OptimizerSettings)
    validation: ValidationSettings | None = None
    smoothing: SmoothingSettings | None = None
    bounds: BoundSettings | None = None


class TrainRunConfig(TrainSpec):
    """``robustgate train CONFIG.yaml``: one model on one data set."""

    name: str
    seed: int = 0
    data: DataSettings


class EvaluationSettings(_Strict):
    attack: AttackSettings = Field(default_factory=EVALUATION_ATTACK.model_copy)
    threat: ThreatSettings = Field(default_factory=ThreatSettings)
    limit: int | None = Field(None, ge=1)
    batch_size: int = Field(500, ge=1)
    autoattack_check: int = Field(0, ge=0)
    # smoothed models are certified on the first ``certify_limit`` test points, summarized at
    # ``certified_radii`` (in the threat's norm; Linf through the covering L2 radius) and eps
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


class OperatingPointSettings(_Strict):
    """Choose the selector's ``κ`` (robustness or bound selector) on validation data among
    ``kappas``: the highest sound robust accuracy (certified accuracy, for the bound selector)
    whose composed natural accuracy is at most ``max_accuracy_drop`` below the core's (0: no
    lower than the core; ``None``: the highest sound robust accuracy)."""

    max_accuracy_drop: float | None = Field(0.0, ge=0)
    kappas: list[float] = Field(default_factory=lambda: list(DEFAULT_KAPPAS), min_length=1)

    @field_validator("kappas")
    @classmethod
    def _check_kappas(cls, kappas: list[float]) -> list[float]:
        if any(not kappa >= 1 for kappa in kappas):
            raise ValueError(f"every kappa must be >= 1, got {kappas}")
        return sorted(set(kappas))


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
    certified compositions, counted on the certified test points."""

    branch: str | list[str]
    core: str
    selector: Literal["robustness", "smoothing", "bounds", "softmax_response", "entropy",
                      "gate", "mixing"] = "robustness"
    bound_method: BoundMethod = "ibp"
    coverage: float | None = Field(None, gt=0, le=1)
    selective_accuracy: float | None = Field(None, gt=0, le=1)
    kappa: float = Field(1.0, ge=1)
    operating_point: OperatingPointSettings | None = None

    @model_validator(mode="after")
    def _one_knob(self) -> CompositionSettings:
        if self.selector in ("smoothing", "bounds") and len(self.branches) > 1:
            raise ValueError(f"the {self.selector} selector composes one branch: give no chain "
                             "with it")
        if self.selector == "smoothing" and self.operating_point:
            raise ValueError("the smoothing selector composes at a given kappa: give no "
                             "operating_point with it")
        if self.bound_method != "ibp" and self.selector != "bounds":
            raise ValueError("bound_method is the bounds selector's")
        if self.selector not in ("robustness", "smoothing", "bounds") and (
                self.kappa != 1 or self.operating_point):
            raise ValueError(f"kappa and operating_point are the robustness, smoothing and "
                             f"bounds selectors'; the {self.selector} selector takes neither")
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
        if self.selector not in ("robustness", "smoothing", "bounds"):
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
        if self.selector in ("smoothing", "bounds"):
            name = "smoothing" if self.selector == "smoothing" else f"bounds: {self.bound_method}"
            return f"{chain} [{name}" + ("]" if knob is None else f", {knob}]")
        if self.selector != "robustness":
            return f"{chain} [{self.selector}]"
        return chain if knob is None else f"{chain} [{knob}]"


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


class ExperimentConfig(_Strict):
    """``robustgate run CONFIG.yaml``: several models trained on one data set, evaluated with
    one attack, and composed."""

    name: str
    seed: int = 0
    data: DataSettings
    models: dict[str, TrainSpec]
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    compositions: list[CompositionSettings] = Field(default_factory=list)
    calibration: CalibrationSettings = Field(default_factory=CalibrationSettings)
    adaptive: AdaptiveSettings = Field(default_factory=AdaptiveSettings)


class DisksSettings(_Strict):
    """The disk problem of Pal & Sulam: a ``size``-pixel square whose class-1 region is a union of
    disks of ``radius`` pixels, centres drawn uniformly ``tries`` times and kept where no kept
    centre lies within the ``(2·radius + gap)`` square around them; ``layouts`` random layouts per
    gap. Noise levels are in pixels."""

    size: int = Field(100, ge=10)
    radius: float = Field(10.0, gt=0)
    gaps: list[float] = Field(default_factory=lambda: [0.0, 1.0, 2.0, 3.0, 10.0, 20.0])
    sigmas: list[float] = Field(default_factory=lambda: [8.0, 11.0, 14.0])
    sigma_trains: list[float] = Field(default_factory=lambda: [float(s) for s in range(21)])
    layouts: int = Field(10, ge=2)
    tries: int = Field(10_000, ge=1)


class GaussiansSettings(_Strict):
    """The trained synthetic problems: ``equal`` (two isotropic Gaussians of one covariance, equal
    priors) and ``clusters`` (class 1 a row of small clusters packed ``spacing`` apart, closer
    than the smoothing noise, in a uniform class-0 background). An MLP is trained with the
    ``gaussian`` loss at each ``σ_train = ratio · σ`` (``standard`` at 0) and smoothed by a
    majority vote of ``votes`` noisy copies on ``n_test`` test points."""

    sigmas: list[float] = Field(default_factory=lambda: [0.04, 0.06, 0.1])
    ratios: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0, 1.25])
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
    sigmas: list[float] = Field(default_factory=lambda: [0.25, 0.5])
    ratios: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0, 1.25])
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

    name: str = "noise-study"
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


def _describe(error: ValidationError) -> str:
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            problems.append(f"unknown key '{where}'")
        else:
            problems.append(f"'{where}': {item['msg']}")
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


def load_config(path: str | Path, kind: type[_Strict]) -> Any:
    """Read a YAML config file and validate it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        values = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a config is a mapping of keys, got {type(values).__name__}")
    return parse_config(values, kind, str(path))


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
