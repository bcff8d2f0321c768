"""Operating points of a composition with the robustness selector (DESIGN.md section 5), or
with the bound selector.

The selector's one knob is ``κ ≥ 1``: deployed, it checks the branch on ``B(x', κ·eps)``. A larger
``κ`` hands more inputs to the core, so the composed natural accuracy moves towards the core's
and the sound robust accuracy (stable selections need the branch robust at ``(κ+1)·eps``) moves
down. Both are read, for every ``κ`` of a sweep, from one set of records holding the branch's
robustness at the radii ``selector_kinds.sweep_radii`` names; ``κ`` is chosen on validation
data. The bound selector's curve is the same arithmetic on certified records (``selection_at``:
``Selection.bounds``), its robust accuracy a certified one.

One knob on one trained branch trades robustness away; the branch's robust inaccuracy, which
training sets, is the lever. :func:`choose_recipe` chooses the recipe and ``κ`` together among
trained candidates, on one validation split, and confirms the choice on a second one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from robustgate.config import SearchSettings
from robustgate.evaluate.metrics import robustness_metrics
from robustgate.evaluate.records import Records
from robustgate.evaluate.results import (
    CandidateChoice,
    ChosenPoint,
    Confirmation,
    CurvePoint,
    OperatingPoint,
    RecipeChoice,
    RobustnessGivenUp,
)
from robustgate.evaluate.sound_count import Selection, compose_records
from robustgate.evaluate.statistics import accuracy_drop_upper_bound, confirmation_size

Data = tuple[torch.Tensor, torch.Tensor]

SelectionAt = Callable[[Records, float, float], Selection]
"""A selector's counted decisions from the branch's records, ``eps`` and ``κ``."""


def operating_curve(branch: Records, core: Records, eps: float, kappas: Sequence[float],
                    selection_at: SelectionAt = Selection.robustness,
                    ) -> list[CurvePoint]:
    """Composed natural accuracy, sound robust accuracy and selection rate at every ``κ``, the
    selector's decisions counted by ``selection_at`` (the robustness selector's by default),
    with the paired comparison against the core: ``lost`` (inputs only the core answers
    rightly), ``gained`` (only the composition) of ``samples``."""
    curve = []
    for kappa in sorted(kappas):
        selection = selection_at(branch, eps, kappa)
        composed = compose_records(branch, core, selection)
        metrics = robustness_metrics(composed.accurate, composed.robust_at(eps))
        curve.append(CurvePoint(float(kappa), metrics["natural_accuracy"],
                                metrics["robust_accuracy"], float(selection.selected.mean()),
                                int((core.accurate & ~composed.accurate).sum()),
                                int((composed.accurate & ~core.accurate).sum()),
                                len(composed)))
    return curve


def point_at(curve: Sequence[CurvePoint], kappa: float) -> CurvePoint:
    """The point of ``curve`` at ``κ = kappa``."""
    return next(point for point in curve if point.kappa == kappa)


def within_accuracy_drop(natural_accuracy: float, core_accuracy: float,
                         max_accuracy_drop: float | None) -> bool:
    """Whether ``natural_accuracy`` is at most ``max_accuracy_drop`` below ``core_accuracy``
    (always, for ``None``), with a tolerance of one sample in a million against the float
    rounding of the difference."""
    return (max_accuracy_drop is None
            or natural_accuracy >= core_accuracy - max_accuracy_drop - 1e-9)


def choose_operating_point(curve: Sequence[CurvePoint], core_accuracy: float,
                           max_accuracy_drop: float | None = None) -> ChosenPoint:
    """The point of ``curve`` with the highest sound robust accuracy among those whose natural
    accuracy is at most ``max_accuracy_drop`` below ``core_accuracy`` (``None``: among all).

    Where no point meets the target, the most accurate one is returned, with ``meets_target``
    false; ties go to the smaller ``κ`` (more inputs for the robust branch).
    """
    if not curve:
        raise ValueError("the operating curve is empty: give at least one kappa")
    if max_accuracy_drop is not None and not max_accuracy_drop >= 0:
        raise ValueError(f"max_accuracy_drop must be >= 0, got {max_accuracy_drop}")
    meeting = [point for point in curve if within_accuracy_drop(
        point.natural_accuracy, core_accuracy, max_accuracy_drop)]
    if meeting:
        chosen = max(meeting, key=lambda point: (point.robust_accuracy, -point.kappa))
    else:
        chosen = max(curve, key=lambda point: (point.natural_accuracy, -point.kappa))
    return ChosenPoint(**chosen.figures(), meets_target=bool(meeting),
                       core_accuracy=core_accuracy, max_accuracy_drop=max_accuracy_drop)


# an operating point that keeps less than this share of the curve's best sound robust accuracy
# meets its accuracy target by giving the robustness up, which the report and compose say
LITTLE_ROBUSTNESS = 0.5


def robustness_given_up(curve: Sequence[CurvePoint], chosen: CurvePoint
                        ) -> RobustnessGivenUp | None:
    """Where the chosen point keeps less than ``LITTLE_ROBUSTNESS`` of the most robust point of
    ``curve`` (the curve it was chosen on): that point's ``κ`` and robust accuracy, and the
    share kept; ``None`` otherwise."""
    best = max(curve, key=lambda point: (point.robust_accuracy, -point.kappa))
    if best.robust_accuracy == 0 or chosen.robust_accuracy >= (
            LITTLE_ROBUSTNESS * best.robust_accuracy):
        return None
    return RobustnessGivenUp(best.kappa, best.robust_accuracy,
                             chosen.robust_accuracy / best.robust_accuracy)


def choose_kappa(branch: Records, core: Records, eps: float, kappas: Sequence[float],
                 max_accuracy_drop: float | None,
                 selection_at: SelectionAt = Selection.robustness) -> OperatingPoint:
    """The curve on ``branch`` and ``core`` records (of validation data) and the point
    :func:`choose_operating_point` picks on it (its ``κ``: ``OperatingPoint.kappa``)."""
    curve = operating_curve(branch, core, eps, kappas, selection_at)
    return OperatingPoint(curve, choose_operating_point(curve, float(core.accurate.mean()),
                                                        max_accuracy_drop))


def validation_parts(search: SearchSettings, validation: Data | None, seed: int
                     ) -> tuple[Data, Data]:
    """The choosing and the confirming part of the validation split: disjoint, drawn at random
    with ``seed`` (a validation split may be ordered by class), each in the split's order;
    refused where the split is missing or too small to confirm the search's target."""
    if validation is None:
        raise ValueError(f"search {search.name!r} chooses on validation data: set "
                         "data.validation_size")
    x, y = validation
    choose = search.choose_size
    confirm = len(y) - choose if search.confirm_size is None else search.confirm_size
    if confirm < 1 or choose + confirm > len(y):
        raise ValueError(f"search {search.name!r}: choose_size {choose} and confirm_size "
                         f"{search.confirm_size} need {choose + max(confirm, 1)} validation "
                         f"points; the validation split has {len(y)}")
    needed = confirmation_size(search.max_accuracy_drop, search.confidence)
    if confirm < needed:
        raise ValueError(
            f"search {search.name!r}: {confirm} confirming points cannot confirm an accuracy "
            f"drop of at most {search.max_accuracy_drop:g} at confidence {search.confidence:g} "
            f"(a one-sided bound needs at least {needed}, even for a composition that never "
            f"differs from its core): raise data.validation_size to at least {choose + needed}, "
            "lower choose_size, or allow a larger max_accuracy_drop")
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    parts = order[:choose].sort().values, order[choose : choose + confirm].sort().values
    return (x[parts[0]], y[parts[0]]), (x[parts[1]], y[parts[1]])


def choose_recipe(choosing: dict[str, Sequence[CurvePoint]],
                  confirming: dict[str, Sequence[CurvePoint]], core_accuracy: float,
                  max_accuracy_drop: float, confidence: float = 0.95) -> RecipeChoice:
    """An operating point over training: the pair (candidate, ``κ``) chosen on one validation
    split and confirmed on a second, disjoint one.

    ``choosing[c]`` and ``confirming[c]`` are candidate ``c``'s curves (:func:`operating_curve`,
    the same ``κ`` values) on the choosing and the confirming points; ``core_accuracy`` is the
    core's natural accuracy on the choosing points.

    1. Each candidate's ``κ`` is chosen on the choosing points (:func:`choose_operating_point`);
       the ``m`` candidates whose point meets the target there go on to be confirmed.
    2. A confirmed pair is accepted where the one-sided upper confidence bound on its accuracy
       drop against the core, paired on the confirming points
       (``statistics.accuracy_drop_upper_bound``), is at most ``max_accuracy_drop``; each of the
       ``m`` bounds at ``1 − (1 − confidence)/m`` (Bonferroni), so that the chance that *any*
       accepted pair's true drop exceeds the target is at most ``1 − confidence``.
    3. Among the accepted pairs the highest sound robust accuracy on the choosing points wins
       (ties: the smaller ``κ``, then the earlier candidate): the confirming points only gate,
       so that the winner's figures on them are not inflated by a choice made on them.

    Where none is accepted, ``chosen`` is ``None`` and ``closest`` names the candidate whose
    confirming bound came nearest to the target (or, where none met it on the choosing points,
    the most accurate one there). ``robustness_given_up`` says where the pair picked (chosen or
    closest) keeps the target only by giving up most of the robustness of the most robust pair
    tried on the choosing points (:func:`robustness_given_up`).
    """
    if not choosing or set(choosing) != set(confirming):
        raise ValueError(f"need the same candidates on both splits, got {sorted(choosing)} and "
                         f"{sorted(confirming)}")
    points = {name: choose_operating_point(curve, core_accuracy, max_accuracy_drop)
              for name, curve in choosing.items()}
    shortlisted = [name for name, point in points.items() if point.meets_target]
    pair_confidence = 1 - (1 - confidence) / max(1, len(shortlisted))
    candidates: dict[str, CandidateChoice] = {}
    for name, point in points.items():
        confirmation = point_at(confirming[name], point.kappa)
        bound = None
        if name in shortlisted:
            bound = accuracy_drop_upper_bound(confirmation.lost, confirmation.gained,
                                              confirmation.samples, pair_confidence)
        candidates[name] = CandidateChoice(point.kappa, point, Confirmation(
            **confirmation.figures(), drop_upper_bound=bound,
            accepted=bound is not None and bound <= max_accuracy_drop + 1e-12))
    order = list(choosing)
    accepted = [name for name in order if candidates[name].confirming.accepted]
    chosen = max(accepted, default=None, key=lambda name: (
        points[name].robust_accuracy, -points[name].kappa, -order.index(name)))
    closest = None
    if chosen is None and shortlisted:
        closest = min(shortlisted, key=lambda name: (
            candidates[name].confirming.drop_upper_bound, order.index(name)))
    elif chosen is None:
        closest = max(order, key=lambda name: (points[name].natural_accuracy,
                                               -order.index(name)))
    picked = chosen if chosen is not None else closest
    assert picked is not None
    every_pair = [entry for curve in choosing.values() for entry in curve]
    return RecipeChoice(candidates, len(order), robustness_given_up(every_pair, points[picked]),
                        sum(len(curve) for curve in choosing.values()), len(shortlisted),
                        pair_confidence, confidence, max_accuracy_drop, core_accuracy, chosen,
                        closest)
