"""Deterministic certificates by bound propagation (DESIGN.md section 3): interval bound
propagation (IBP; Gowal et al., 2018), backward linear bounds (CROWN; Zhang et al., 2018) and
CROWN-IBP (Zhang et al., 2020) over a model's traced forward (``certify.graph``: feed-forward and
residual networks alike), walking the per-operation rules of ``certify.rules`` along the graph.

Each bounds the logit differences ``f_ŷ − f_j`` (the specification ``C``, one row per ``j ≠ ŷ``)
over the threat ball intersected with the domain; a sample is certified when every lower bound
is positive. Bounding the differences, not the logits one by one, folds ``C`` into the last
linear layer (IBP) or starts the backward pass from it (CROWN).

- IBP pushes boxes in centre/radius form through the rules, operation by operation in the
  trace's order (a residual sum adds its operands' boxes). Over an L2 ball, the first
  Linear/Conv2d layer (after elementwise scalings such as ``Normalize``) is bounded exactly by
  its rows' L2 norms, intersected with the box the domain gives.
- CROWN bounds ``C·f(x) ≥ Λ·x + β`` by passing linear coefficients backwards through the rules'
  backward rules (explicit transposed operations; no autograd), in reverse trace order: an
  operation read by several others (the input of a residual block) takes the sum of their
  coefficients. At the input, ``Λ·x`` is minimized over the box (Linf) or the L2 ball.
- Intermediate bounds, on feed-forward and residual networks alike: the pre-activation bounds
  of every ReLU are IBP's, tightened by CROWN through every operation before it (both branches
  of each residual block) where that pays (:func:`preactivation_bounds`); CROWN-IBP keeps IBP's.
  The last layer's class pairs are bounded again by intervals from the tightened ReLU bounds.
- Memory is bounded by chunking: coefficients of at most ``CHUNK_ELEMENTS`` numbers are alive at
  a time, so the cost per input does not grow with the batch.

Interval bounds are monotone under inclusion of boxes: IBP certifying ``B(x, r)`` certifies every
box inside it. CROWN's relaxation adapts to the region and carries no such guarantee.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robustgate.certify.graph import BoundGraph, bound_graph
from robustgate.certify.methods import bound_method_names
from robustgate.certify.rules import (
    MAX_POOLING_REFUSAL,
    MULTIPLE_OPERANDS,
    BatchStatisticsRule,
    ElementwiseRule,
    IdentityRule,
    LinearRule,
    MaxPool2dRule,
    ReLURule,
    ReshapeRule,
    Rule,
)
from robustgate.inputs import check_outputs
from robustgate.models.modes import as_model_dtype
from robustgate.registry import CERTIFICATE_METHODS
from robustgate.threat import ThreatModel

BOUND_METHODS = bound_method_names()
"""``ibp``, ``crown-ibp``, ``crown`` and ``ibp+crown`` (the larger of IBP's and CROWN's bound on
every row): the bound-propagation methods of ``registry.CERTIFICATE_METHODS``."""
INTERVAL_METHODS = tuple(name for name in BOUND_METHODS if CERTIFICATE_METHODS[name].monotone)
"""The methods that certify wherever IBP does, and so inherit its monotonicity under inclusion
(a bound selector's stability)."""
CHUNK_ELEMENTS = 2**22
"""The most numbers in the coefficients of one chunk of a backward pass (16 MiB in float32)."""
Bounded = nn.Module | Sequence[nn.Module]
"""What the bounds take: a model (its traced forward), or layers applied in order."""


def traced(model: Bounded) -> BoundGraph:
    """The traced graph of ``model`` (``certify.graph``); layers are bounded as the
    ``nn.Sequential`` of them. Raises for an operation without a rule, naming it."""
    return bound_graph(model if isinstance(model, nn.Module) else nn.Sequential(*model))


def margin_specification(predicted: torch.Tensor, num_classes: int,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``C`` of shape ``(batch, K − 1, K)``: the rows ``e_ŷ − e_j`` for every ``j ≠ ŷ``."""
    eye = torch.eye(num_classes, device=predicted.device, dtype=dtype)
    others = torch.stack([torch.cat([torch.arange(j), torch.arange(j + 1, num_classes)])
                          for j in range(num_classes)]).to(predicted.device)
    return eye[predicted].unsqueeze(1) - eye[others[predicted]]


def pair_specification(num_classes: int, device: torch.device | str = "cpu",
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``C`` of shape ``(K·(K − 1), K)`` for every input alike: the rows of
    :func:`margin_specification` of class 0, then of class 1, and so on (every class pair)."""
    classes = torch.arange(num_classes, device=device)
    return margin_specification(classes, num_classes, dtype).flatten(0, 1)


def input_box(x: torch.Tensor, threat: ThreatModel) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest box holding the threat ball around ``x`` intersected with the domain."""
    return ((x - threat.eps).clamp(threat.low, threat.high),
            (x + threat.eps).clamp(threat.low, threat.high))


def _specified(rule: LinearRule, specification: torch.Tensor, centre: torch.Tensor,
               radius: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The last linear layer with ``specification`` folded in: shared ``(rows, K)`` or per input
    ``(batch, rows, K)``."""
    weight, bias = specification @ rule.weight, specification @ rule.bias
    if specification.dim() == 2:
        return F.linear(centre, weight, bias), F.linear(radius, weight.abs())
    return ((weight @ centre.unsqueeze(2)).squeeze(2) + bias,
            (weight.abs() @ radius.unsqueeze(2)).squeeze(2))


@dataclass
class Walk:
    """The rules of a traced graph and what an interval pass over it saw: each operation's
    output shape and, where ``relu_inputs`` was asked for, the bounds of every ReLU's input
    (keyed by the ReLU's index in the graph). Operation 0 is the input."""

    graph: BoundGraph
    rules: list[Rule]
    shapes: list[torch.Size]
    relu_inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] | None

    def operands(self, index: int) -> tuple[int, ...]:
        return self.graph.operations[index].operands

    def interval(self, centre: torch.Tensor, radius: torch.Tensor,
                 specification: torch.Tensor | None = None,
                 replaced: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Centre and radius of the output for those of the input (``specification`` folded
        into the last layer), building the rules on the first pass. ``replaced`` gives, by
        operation, bounds that replace the pass's own (a ReLU's tightened input bounds by the
        ReLU's index, the exact bounds of a first layer by its own)."""
        operations = self.graph.operations
        replaced = replaced or {}
        readers = [0] * len(operations)
        for operation in operations:
            for operand in operation.operands:
                readers[operand] += 1
        values: dict[int, tuple[torch.Tensor, torch.Tensor]] = {0: (centre, radius)}
        if not self.shapes:
            self.shapes.append(centre.shape[1:])
        for index in range(1, len(operations)):
            operands = operations[index].operands
            centres = [values[operand][0] for operand in operands]
            radii = [values[operand][1] for operand in operands]
            for operand in operands:
                readers[operand] -= 1
                if readers[operand] == 0:
                    del values[operand]
            if index == len(self.rules):
                self.rules.append(operations[index].build(centres))
            rule = self.rules[index]
            if isinstance(rule, ReLURule):
                if self.relu_inputs is not None:
                    self.relu_inputs.setdefault(
                        index, (centres[0] - radii[0], centres[0] + radii[0]))
                if index in replaced:
                    low, high = replaced[index]
                    centres, radii = [(high + low) / 2], [(high - low) / 2]
            if isinstance(rule, MULTIPLE_OPERANDS):
                out = rule.interval(centres, radii)
            elif index == len(operations) - 1 and specification is not None:
                out = _specified(rule, specification, centres[0], radii[0])
            else:
                out = rule.interval(centres[0], radii[0])
            if index in replaced and not isinstance(rule, ReLURule):
                ball_low, ball_high = replaced[index]
                low = torch.maximum(ball_low, out[0] - out[1])
                high = torch.minimum(ball_high, out[0] + out[1])
                out = ((high + low) / 2, (high - low) / 2)
            values[index] = out
            if index == len(self.shapes):
                self.shapes.append(out[0].shape[1:])
        return values[len(operations) - 1]


def _walk(model: Bounded, relu_inputs: bool = False) -> Walk:
    graph = traced(model)
    graph.check_state()
    return Walk(graph, [IdentityRule()], [], {} if relu_inputs else None)


def _interval_walk(model: Bounded, x: torch.Tensor, threat: ThreatModel,
                   specification: torch.Tensor | None, relu_inputs: bool = False,
                   ) -> tuple[Walk, torch.Tensor, torch.Tensor]:
    """IBP over the traced forward: the walk and the lower and upper bounds of its output."""
    walk = _walk(model, relu_inputs)
    low, high = input_box(x, threat)
    centre, radius = (high + low) / 2, (high - low) / 2
    exact = _l2_first_layer(walk.graph, x, threat.eps, specification) if (
        threat.norm == "l2") else None
    centre, radius = walk.interval(centre, radius, specification,
                                   None if exact is None else {exact[0]: exact[1:]})
    return walk, centre - radius, centre + radius


def _l2_first_layer(graph: BoundGraph, x: torch.Tensor, eps: float,
                    specification: torch.Tensor | None,
                    ) -> tuple[int, torch.Tensor, torch.Tensor] | None:
    """Exact bounds of the first Linear/Conv2d layer over the L2 ball where the input reaches it
    through elementwise scalings and reshapes only, one after the other (folded in as a
    per-feature scale; ``specification`` after it where it is the last layer); ``None``
    otherwise. Returns the layer's index and the lower and upper bounds."""
    centre, scale = x, torch.ones_like(x[:1])
    operations = graph.operations
    for index in range(1, len(operations)):
        if operations[index].operands != (index - 1,) or sum(
                index - 1 in operation.operands for operation in operations) > 1:
            return None
        rule = operations[index].build([centre])
        layer = getattr(rule, "layer", None)
        if isinstance(rule, (ElementwiseRule, ReshapeRule)):
            centre, scale = rule.interval(centre, scale)
        elif isinstance(rule, LinearRule) and index == len(operations) - 1 and (
                specification is not None):
            weight = specification @ rule.weight
            norms = F.linear(scale**2, weight**2).sqrt() if weight.dim() == 2 else (
                ((weight * scale.unsqueeze(1)) ** 2).sum(dim=2).sqrt())
            out = _specified(rule, specification, centre, torch.zeros_like(centre))[0]
            return index, out - eps * norms, out + eps * norms
        elif isinstance(rule, LinearRule):
            norms = F.linear(scale**2, rule.weight**2).sqrt()
            out = F.linear(centre, rule.weight, rule.bias)
            return index, out - eps * norms, out + eps * norms
        elif isinstance(layer, nn.Conv2d):
            norms = F.conv2d((scale**2).expand_as(centre[:1]), layer.weight**2, None,
                             layer.stride, layer.padding, layer.dilation, layer.groups).sqrt()
            out = layer(centre)
            return index, out - eps * norms, out + eps * norms
        else:
            return None
    return None


def interval_bounds(model: Bounded, x: torch.Tensor, threat: ThreatModel,
                    specification: torch.Tensor | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """IBP lower and upper bounds of ``specification · f`` (of ``f`` itself without one) over
    the threat ball around ``x`` intersected with the domain, ``f`` the traced forward of
    ``model``. ``specification`` is per input, ``(batch, rows, K)``, or shared, ``(rows, K)``.
    Batch normalization in train mode takes the batch statistics of the centres
    (``certify.rules``), for certified training."""
    _, low, high = _interval_walk(model, x, threat, specification)
    return low, high


def _concretize(coefficients: torch.Tensor, x: torch.Tensor, threat: ThreatModel
                ) -> torch.Tensor:
    """``min Λ·x'`` over the threat ball around ``x`` (and the domain, for Linf)."""
    flat = coefficients.flatten(2)
    if threat.norm == "linf":
        low, high = input_box(x, threat)
        return (flat.clamp(min=0) @ low.flatten(1).unsqueeze(2)
                + flat.clamp(max=0) @ high.flatten(1).unsqueeze(2)).squeeze(2)
    return (flat @ x.flatten(1).unsqueeze(2)).squeeze(2) - threat.eps * flat.norm(dim=2)


def _backward_lower(walk: Walk, start: int, relu_bounds: dict[int, tuple[torch.Tensor,
                    torch.Tensor]], images: torch.Tensor, coefficients: torch.Tensor,
                    constant: torch.Tensor, x: torch.Tensor, threat: ThreatModel,
                    ) -> torch.Tensor:
    """The CROWN lower bound of ``coefficients · (output of operation start)(x') + constant``
    over the ball, for the inputs ``images`` of the batch (the rows of ``coefficients``). The
    coefficients go back through the graph in reverse order; an operation read by several
    others (a residual block's input) takes the sum of their coefficients."""
    pending = {start: coefficients}
    for index in reversed(range(1, start + 1)):
        if index not in pending:
            continue
        coefficients = pending.pop(index)
        rule = walk.rules[index]
        if isinstance(rule, ReLURule):
            low, high = relu_bounds[index]
            coefficients, added = rule.backward(coefficients, low[images], high[images])
        else:
            coefficients, added = rule.backward(coefficients)
        constant = constant + added
        operands = walk.operands(index)
        for operand, through in zip(operands, coefficients if isinstance(
                rule, MULTIPLE_OPERANDS) else [coefficients], strict=True):
            pending[operand] = pending[operand] + through if operand in pending else through
    return _concretize(pending[0], x[images], threat) + constant


def _chunks(rows: torch.Tensor, row_elements: int) -> list[torch.Tensor]:
    """Groups of inputs (indices), for ``rows`` rows of coefficients per input of
    ``row_elements`` numbers each: the inputs sorted by their rows, so that a group pads little,
    and each group's padded coefficients within ``CHUNK_ELEMENTS``."""
    order = rows.argsort(descending=True)
    groups, start = [], 0
    while start < len(order):
        widest = max(int(rows[order[start]]), 1)
        size = max(1, CHUNK_ELEMENTS // (widest * row_elements))
        groups.append(order[start:start + size])
        start += size
    return groups


def _row_elements(walk: Walk, start: int) -> int:
    """The most numbers one row of coefficients holds at a time in a backward pass from
    operation ``start``: the outputs of the operations whose coefficients are pending at once
    (one at a time in a chain; a residual block's input and its branch together)."""
    pending, most = {start}, walk.shapes[start].numel()
    for index in reversed(range(1, start + 1)):
        if index in pending:
            pending.discard(index)
            pending.update(walk.operands(index))
            most = max(most, sum(walk.shapes[operand].numel() for operand in pending))
    return most


def _exact_by_intervals(rules: list[Rule]) -> bool:
    """Whether IBP is exact on these operations: no monotone one, at most one that mixes
    features (a sum of branches counts as mixing)."""
    mixing = [rule for rule in rules
              if not isinstance(rule, (ElementwiseRule, ReshapeRule, IdentityRule))]
    return len(mixing) <= 1 and not any(isinstance(rule, (ReLURule, MaxPool2dRule))
                                        for rule in mixing)


def _tighten(walk: Walk, index: int, relu_bounds: dict[int, tuple[torch.Tensor, torch.Tensor]],
             x: torch.Tensor, threat: ThreatModel, every_unit: bool = False,
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """IBP's bounds of the input of ReLU ``index`` intersected with CROWN's, on the units IBP
    leaves unstable (a stable unit's relaxation is exact whatever its bounds), in groups of
    inputs sized by their unstable units; with ``every_unit``, on every unit of the whole batch
    at once (the same relaxations, without a data-dependent shape: the form that exports)."""
    low, high = relu_bounds[index]
    flat_low, flat_high = low.flatten(1).clone(), high.flatten(1).clone()
    if every_unit:
        unstable = torch.ones_like(flat_low, dtype=torch.bool)
        units = torch.arange(flat_low.shape[1], device=x.device)
    else:
        unstable = (flat_low < 0) & (flat_high > 0)
        units = unstable.any(dim=0).nonzero().squeeze(1)
        if len(units) == 0:
            return low, high
    shape = low.shape[1:]
    # the unit rows, through the operation before the ReLU once for the whole batch where it is
    # affine with one operand
    table = torch.zeros(len(units), shape.numel(), device=x.device, dtype=x.dtype)
    table[torch.arange(len(units)), units] = 1
    table, table_constant = table.view(1, len(units), *shape), table.new_zeros(1, len(units))
    (start,) = walk.operands(index)
    before = walk.rules[start]
    if start > 0 and not isinstance(before, (ReLURule, MaxPool2dRule, *MULTIPLE_OPERANDS)):
        table, table_constant = before.backward(table)
        (start,) = walk.operands(start)
    position = torch.zeros(shape.numel(), dtype=torch.long, device=x.device)
    position[units] = torch.arange(len(units), device=x.device)
    if every_unit:
        groups = [(torch.arange(x.shape[0], device=x.device), len(units))]
    else:
        counts = unstable.sum(dim=1)
        groups = [(images, max(int(counts[images].max()), 1))
                  for images in _chunks(2 * counts, _row_elements(walk, start))]
    for images, rows in groups:
        mask = unstable[images]
        chosen = mask.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :rows]
        valid = mask.gather(1, chosen)
        coefficients = table[0, position[chosen]]
        constant = table_constant[0, position[chosen]]
        lower = _backward_lower(walk, start, relu_bounds, images,
                                torch.cat([coefficients, -coefficients], dim=1),
                                torch.cat([constant, -constant], dim=1), x, threat)
        for flat, bound, pick in ((flat_low, lower[:, :rows], torch.maximum),
                                  (flat_high, -lower[:, rows:], torch.minimum)):
            current = flat[images].gather(1, chosen)
            flat[images] = flat[images].scatter(
                1, chosen, torch.where(valid, pick(current, bound), current))
    return flat_low.view_as(low), flat_high.view_as(high)


def _check_crown(walk: Walk) -> None:
    """Refuse what CROWN does not bound before it bounds anything."""
    if any(isinstance(rule, MaxPool2dRule) for rule in walk.rules):
        raise ValueError(MAX_POOLING_REFUSAL)
    if any(isinstance(rule, BatchStatisticsRule) for rule in walk.rules):
        raise ValueError("batch normalization is bounded in eval mode, with running "
                         "statistics, only (the batch statistics rule is IBP's, for training)")


def preactivation_bounds(model: Bounded, x: torch.Tensor, threat: ThreatModel,
                         crown_neurons: int = 2048,
                         ) -> tuple[Walk, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """The walk over the traced forward of ``model`` and the lower and upper bounds of the input
    of every ReLU (keyed by its index in the graph): IBP's, intersected with CROWN's on the
    operations before it on the units IBP leaves unstable, where the ReLU has at most
    ``crown_neurons`` units and IBP is not already exact there (an affine layer on the input).

    The policy by cost: CROWN on a ReLU costs two backward passes per unstable unit through every
    operation before it (each about a forward pass of one input), so the widest layers, early in
    the network, are left to IBP; ``crown_neurons = 0`` gives CROWN-IBP. On a residual network
    the policy is the same, ReLU by ReLU in the order of the trace: a ReLU's CROWN pass goes
    back through both branches of every residual block before it, with the (tightened) bounds
    of every earlier ReLU."""
    walk, _, _ = _interval_walk(model, x, threat, None, relu_inputs=True)
    _check_crown(walk)
    return walk, _tightened(walk, x, threat, crown_neurons)


def _tightened(walk: Walk, x: torch.Tensor, threat: ThreatModel, crown_neurons: int,
               every_unit: bool = False) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """The walk's ReLU input bounds, tightened by CROWN where :func:`preactivation_bounds`
    says, from the first ReLU to the last (``every_unit``: as :func:`_tighten`)."""
    relu_bounds = dict(walk.relu_inputs)
    for index in sorted(relu_bounds):
        if (relu_bounds[index][0][0].numel() <= crown_neurons
                and not _exact_by_intervals(walk.rules[1:index])):
            relu_bounds[index] = _tighten(walk, index, relu_bounds, x, threat, every_unit)
    return relu_bounds


def _crown_specification(walk: Walk, relu_bounds: dict[int, tuple[torch.Tensor, torch.Tensor]],
                         specification: torch.Tensor, x: torch.Tensor, threat: ThreatModel,
                         chunked: bool = True) -> torch.Tensor:
    """CROWN lower bounds of ``specification · f`` (per input) given the ReLU bounds, in groups
    of inputs whose coefficients fit ``CHUNK_ELEMENTS`` (``chunked``) or the whole batch at
    once."""
    final = len(walk.rules) - 1
    (start,) = walk.operands(final)
    if not chunked:
        coefficients, constant = walk.rules[final].backward(specification)
        return _backward_lower(walk, start, relu_bounds, torch.arange(x.shape[0], device=x.device),
                               coefficients, constant, x, threat)
    lower = torch.empty(specification.shape[:2], device=x.device, dtype=x.dtype)
    rows = torch.full((len(x),), specification.shape[1], device=x.device)
    for images in _chunks(rows, _row_elements(walk, start)):
        coefficients, constant = walk.rules[final].backward(specification[images])
        lower[images] = _backward_lower(walk, start, relu_bounds, images, coefficients,
                                        constant, x, threat)
    return lower


def crown_bounds(model: Bounded, x: torch.Tensor, threat: ThreatModel,
                 specification: torch.Tensor, crown_neurons: int = 2048) -> torch.Tensor:
    """CROWN lower bounds of ``specification · f`` (per input, ``(batch, rows, K)``) over the
    threat ball (module docstring), ``f`` the traced forward of ``model``;
    ``crown_neurons = 0`` gives CROWN-IBP."""
    walk, relu_bounds = preactivation_bounds(model, x, threat, crown_neurons)
    return _crown_specification(walk, relu_bounds, specification, x, threat)


def _best_class(pairs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For pair bounds ``pairs`` (``(batch, K, K − 1)``, the rows of every class's
    :func:`margin_specification`): the largest of the classes' margins, and its class."""
    return pairs.min(dim=2).values.max(dim=1)


def _predictions(model: nn.Module, x: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """The clean predictions: the class whose pair bounds ``pairs`` are all positive where there
    is one (the clean input lies in the ball, so it is the clean prediction), a forward pass of
    the other inputs."""
    best, predicted = _best_class(pairs)
    uncertified = (~(best > 0)).nonzero().squeeze(1)  # non-finite bounds too
    if len(uncertified):
        logits = model(x[uncertified])
        check_outputs(logits, type(model).__name__)
        predicted[uncertified] = logits.argmax(dim=1)
    return predicted


def _interval_pairs(model: Bounded, x: torch.Tensor, threat: ThreatModel,
                    relu_inputs: bool = False) -> tuple[Walk, torch.Tensor]:
    """The IBP walk and its lower bounds of every class pair, ``(batch, K, K − 1)``."""
    num_classes = traced(model).last_layer.out_features
    pairs = pair_specification(num_classes, x.device, x.dtype)
    walk, low, _ = _interval_walk(model, x, threat, pairs, relu_inputs)
    return walk, low.unflatten(1, (num_classes, num_classes - 1))


def _check_certifiable(model: nn.Module) -> None:
    """A certificate is of the deployed model: batch normalization in eval mode."""
    if any(isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)) and (
            module.training or module.running_var is None) for module in model.modules()):
        raise ValueError("batch normalization is bounded in eval mode, with running "
                         "statistics, only")


def interval_certificates(model: nn.Module, x: torch.Tensor, threat: ThreatModel,
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per input, the class whose IBP margin over the threat ball is the largest of all classes'
    and that margin: positive exactly where IBP certifies the input (:func:`certify_bounds`),
    and then the class is the clean prediction. Without a forward pass or a data-dependent
    shape, so that it exports (``torch.export``; trace the model first, :func:`traced`)."""
    _check_certifiable(model)
    margin, classes = _best_class(_interval_pairs(model, x, threat)[1])
    return classes, margin


def crown_certificates(model: nn.Module, x: torch.Tensor, threat: ThreatModel,
                       method: str = "crown", crown_neurons: int = 2048,
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per input, the clean prediction and its certified margin by a CROWN ``method``
    (``crown-ibp``, ``crown`` or ``ibp+crown``) as :func:`certify_bounds` bounds it, in the form
    that exports (``torch.export``; trace the model first, :func:`traced`): the prediction from
    a forward pass of every input, a tightened ReLU layer bounded on all of its units (stable
    ones included, whose relaxation is exact whatever their bounds, so the bounds are the
    same), and each backward pass over the whole batch at once. It costs more per input than
    :func:`certify_bounds` (which bounds only the unstable units, in groups sized to memory),
    and its margins equal those up to floating-point summation order."""
    if method not in BOUND_METHODS or method == "ibp":
        raise ValueError(f"method must be one of the CROWN methods "
                         f"{[m for m in BOUND_METHODS if m != 'ibp']}, got {method!r} (IBP's "
                         "exporting form is interval_certificates)")
    _check_certifiable(model)
    num_classes = traced(model).last_layer.out_features
    x = as_model_dtype(x, model)
    with torch.no_grad():
        walk, interval = _interval_pairs(model, x, threat, relu_inputs=True)
        _check_crown(walk)
        relu_bounds = _tightened(walk, x, threat, 0 if method == "crown-ibp" else crown_neurons,
                                 every_unit=True)
        predicted = model(x).argmax(dim=1)
        margin = _crown_specification(
            walk, relu_bounds, margin_specification(predicted, num_classes, x.dtype), x, threat,
            chunked=False)
        if method == "ibp+crown":
            pairs = interval.gather(1, predicted.view(-1, 1, 1).expand(-1, 1, num_classes - 1))
            margin = torch.maximum(margin, pairs.squeeze(1))
    return predicted, margin.min(dim=1).values


def certify_bounds(model: nn.Module, x: torch.Tensor, threat: ThreatModel,
                   method: str = "ibp", crown_neurons: int = 2048,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean predictions ``ŷ`` and the certified margin: the lower bound of
    ``min_{j≠ŷ} (f_ŷ − f_j)`` over the threat ball by ``method`` (``ibp``, ``crown-ibp``,
    ``crown``, or ``ibp+crown``, the larger of IBP's and CROWN's), ``f`` the traced forward of
    ``model``. A sample is certified where the margin is positive.

    Every class pair is bounded by intervals at the last layer (IBP's, or from the ReLU bounds
    CROWN's pass computed); where one class's pairs are all positive, that is ``ŷ`` without a
    clean forward pass, which runs on the other inputs only. Non-finite logits are refused;
    inputs of another floating dtype are converted (a warning)."""
    if method not in BOUND_METHODS:
        raise ValueError(f"method must be one of {BOUND_METHODS}, got {method!r}")
    _check_certifiable(model)
    num_classes = traced(model).last_layer.out_features
    x = as_model_dtype(x, model)
    rows = torch.arange(len(x), device=x.device)
    with torch.no_grad():
        walk, interval = _interval_pairs(model, x, threat, relu_inputs=method != "ibp")
        if method == "ibp":
            predicted = _predictions(model, x, interval)
            return predicted, interval[rows, predicted].min(dim=1).values
        _check_crown(walk)
        relu_bounds = _tightened(walk, x, threat, 0 if method == "crown-ibp" else crown_neurons)
        tightened = interval
        if relu_bounds:  # the pairs again, from the tightened ReLU bounds
            low, high = input_box(x, threat)
            centre, radius = walk.interval((high + low) / 2, (high - low) / 2,
                                           pair_specification(num_classes, x.device, x.dtype),
                                           relu_bounds)
            tightened = (centre - radius).view_as(interval)
        predicted = _predictions(model, x, tightened)
        specification = margin_specification(predicted, num_classes, x.dtype)
        margin = _crown_specification(walk, relu_bounds, specification, x, threat)
        if method == "ibp+crown":
            margin = torch.maximum(margin, interval[rows, predicted])
    return predicted, margin.min(dim=1).values
