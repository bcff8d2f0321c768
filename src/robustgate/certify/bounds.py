"""Deterministic certificates by bound propagation (DESIGN.md section 3): interval bound
propagation (IBP; Gowal et al., 2018), backward linear bounds (CROWN; Zhang et al., 2018) and
CROWN-IBP (Zhang et al., 2020) for feed-forward networks, walking the per-operation rules of
``certify.rules`` along the layers.

Each bounds the logit differences ``f_ŷ − f_j`` (the specification ``C``, one row per ``j ≠ ŷ``)
over the threat ball intersected with the domain; a sample is certified when every lower bound
is positive. Bounding the differences, not the logits one by one, folds ``C`` into the last
linear layer (IBP) or starts the backward pass from it (CROWN).

- IBP pushes boxes in centre/radius form through the rules. Over an L2 ball, the first
  Linear/Conv2d layer (after elementwise scalings such as ``Normalize``) is bounded exactly by
  its rows' L2 norms, intersected with the box the domain gives.
- CROWN bounds ``C·f(x) ≥ Λ·x + β`` by passing linear coefficients backwards through the rules'
  backward rules (explicit transposed operations; no autograd). At the input, ``Λ·x`` is
  minimized over the box (Linf) or the L2 ball. The pre-activation bounds of every ReLU are
  IBP's, tightened by CROWN on the layers before it where that pays (:func:`preactivation_bounds`);
  CROWN-IBP keeps IBP's.
- Memory is bounded by chunking: coefficients of at most ``CHUNK_ELEMENTS`` numbers are alive at
  a time, so the cost per input does not grow with the batch.

Interval bounds are monotone under inclusion of boxes: IBP certifying ``B(x, r)`` certifies every
box inside it. CROWN's relaxation adapts to the region and carries no such guarantee.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from robustgate.certify.methods import bound_method_names
from robustgate.certify.rules import (
    AFFINE,
    ELEMENTWISE,
    MONOTONE,
    ElementwiseRule,
    FlattenRule,
    LinearRule,
    MaxPool2dRule,
    ReLURule,
    Rule,
    rule_for,
)
from robustgate.inputs import check_outputs
from robustgate.models import MLP
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


def feed_forward_layers(model: nn.Module) -> list[nn.Module]:
    """The layers ``model`` applies in order; raises for a layer the bounds do not cover."""
    if isinstance(model, nn.Sequential):
        layers = list(model)
    elif isinstance(getattr(model, "layers", None), nn.Sequential):
        layers = [nn.Flatten(), *model.layers] if isinstance(model, MLP) else list(model.layers)
    else:
        raise ValueError(f"bound propagation covers feed-forward models (an nn.Sequential, or a "
                         f"model whose forward is its `layers`), not {type(model).__name__}")
    for layer in layers:
        if not isinstance(layer, (*AFFINE, *MONOTONE)):
            raise ValueError(f"bound propagation does not cover {type(layer).__name__} layers")
        if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)) and (
                layer.training or layer.running_var is None):
            raise ValueError("batch normalization is bounded in eval mode, with running "
                             "statistics, only")
        if isinstance(layer, nn.Conv2d) and layer.padding_mode != "zeros":
            raise ValueError(f"bound propagation covers zero-padded convolutions, not "
                             f"padding_mode={layer.padding_mode!r}")
    if not isinstance(layers[-1], nn.Linear):
        raise ValueError("bound propagation needs a model that ends in a Linear layer")
    return layers


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
    """The rules of ``layers`` and what an interval pass over them saw: each layer's input
    shape and, where ``relu_inputs`` was asked for, the bounds of every ReLU's input (keyed by
    the layer's index)."""

    layers: list[nn.Module]
    rules: list[Rule]
    shapes: list[torch.Size]
    relu_inputs: dict[int, tuple[torch.Tensor, torch.Tensor]] | None

    def interval(self, centre: torch.Tensor, radius: torch.Tensor, start: int = 0,
                 stop: int | None = None, specification: torch.Tensor | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Centre and radius after layers ``start`` to ``stop`` (the end, with
        ``specification`` folded into the last layer), building rules as it goes."""
        stop = len(self.layers) if stop is None else stop
        for index in range(start, stop):
            if index == len(self.rules):
                self.shapes.append(centre.shape[1:])
                self.rules.append(rule_for(self.layers[index], centre.shape[1:]))
            rule = self.rules[index]
            if isinstance(rule, ReLURule) and self.relu_inputs is not None:
                self.relu_inputs.setdefault(index, (centre - radius, centre + radius))
            if index == len(self.layers) - 1 and specification is not None:
                centre, radius = _specified(rule, specification, centre, radius)
            else:
                centre, radius = rule.interval(centre, radius)
        return centre, radius


def _interval_walk(layers: list[nn.Module], x: torch.Tensor, threat: ThreatModel,
                   specification: torch.Tensor | None, relu_inputs: bool = False,
                   ) -> tuple[Walk, torch.Tensor, torch.Tensor]:
    """IBP over all of ``layers``: the walk and the lower and upper bounds of its output."""
    walk = Walk(layers, [], [], {} if relu_inputs else None)
    low, high = input_box(x, threat)
    centre, radius = (high + low) / 2, (high - low) / 2
    if threat.norm == "l2":
        exact = _l2_first_layer(layers, x, threat.eps, specification)
        if exact is not None:
            start, ball_low, ball_high = exact
            centre, radius = walk.interval(centre, radius, 0, start, specification)
            low = torch.maximum(ball_low, centre - radius)
            high = torch.minimum(ball_high, centre + radius)
            centre, radius = (high + low) / 2, (high - low) / 2
            centre, radius = walk.interval(centre, radius, start, specification=specification)
            return walk, centre - radius, centre + radius
    centre, radius = walk.interval(centre, radius, specification=specification)
    return walk, centre - radius, centre + radius


def _l2_first_layer(layers: list[nn.Module], x: torch.Tensor, eps: float,
                    specification: torch.Tensor | None,
                    ) -> tuple[int, torch.Tensor, torch.Tensor] | None:
    """Exact bounds of the first Linear/Conv2d layer over the L2 ball (elementwise layers and
    flattening before it folded in as a per-feature scale, ``specification`` after it where it is
    the last layer); ``None`` if another layer precedes it. Returns the index of the layer after
    it and the lower and upper bounds."""
    centre, scale = x, torch.ones_like(x[:1])
    for index, layer in enumerate(layers):
        if isinstance(layer, ELEMENTWISE):
            rule = ElementwiseRule(layer, centre.shape[1:])
            centre, scale = rule.interval(centre, scale)
        elif isinstance(layer, nn.Flatten):
            centre, scale = centre.flatten(1), scale.flatten(1)
        elif isinstance(layer, nn.Linear) and index == len(layers) - 1 and (
                specification is not None):
            weight = specification @ layer.weight
            norms = F.linear(scale**2, weight**2).sqrt() if weight.dim() == 2 else (
                ((weight * scale.unsqueeze(1)) ** 2).sum(dim=2).sqrt())
            out = _specified(LinearRule(layer), specification, centre, torch.zeros_like(centre))[0]
            return index + 1, out - eps * norms, out + eps * norms
        elif isinstance(layer, nn.Linear):
            norms = F.linear(scale**2, layer.weight**2).sqrt()
            out = layer(centre)
            return index + 1, out - eps * norms, out + eps * norms
        elif isinstance(layer, nn.Conv2d):
            norms = F.conv2d((scale**2).expand_as(centre[:1]), layer.weight**2, None,
                             layer.stride, layer.padding, layer.dilation, layer.groups).sqrt()
            out = layer(centre)
            return index + 1, out - eps * norms, out + eps * norms
        else:
            return None
    return None


def interval_bounds(layers: list[nn.Module], x: torch.Tensor, threat: ThreatModel,
                    specification: torch.Tensor | None = None,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """IBP lower and upper bounds of ``specification · f`` (of ``f`` itself without one) over
    the threat ball around ``x`` intersected with the domain. ``specification`` is per input,
    ``(batch, rows, K)``, or shared, ``(rows, K)``."""
    _, low, high = _interval_walk(layers, x, threat, specification)
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


def _backward_lower(walk: Walk, stop: int, relu_bounds: dict[int, tuple[torch.Tensor,
                    torch.Tensor]], images: torch.Tensor, coefficients: torch.Tensor,
                    constant: torch.Tensor, x: torch.Tensor, threat: ThreatModel,
                    ) -> torch.Tensor:
    """The CROWN lower bound of ``coefficients · (layers before stop)(x') + constant`` over the
    ball, for the inputs ``images`` of the batch (the rows of ``coefficients``)."""
    for index in reversed(range(stop)):
        rule = walk.rules[index]
        if isinstance(rule, ReLURule):
            low, high = relu_bounds[index]
            coefficients, added = rule.backward(coefficients, low[images], high[images])
        else:
            coefficients, added = rule.backward(coefficients)
        constant = constant + added
    return _concretize(coefficients, x[images], threat) + constant


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


def _row_elements(walk: Walk, stop: int) -> int:
    """The most numbers one row of coefficients holds in a backward pass from ``stop``."""
    return max(shape.numel() for shape in walk.shapes[:stop + 1])


def _exact_by_intervals(rules: list[Rule]) -> bool:
    """Whether IBP is exact on these layers: no monotone layer, at most one that mixes
    features."""
    mixing = [rule for rule in rules if not isinstance(rule, (ElementwiseRule, FlattenRule))]
    return len(mixing) <= 1 and not any(isinstance(rule, (ReLURule, MaxPool2dRule))
                                        for rule in mixing)


def _tighten(walk: Walk, index: int, relu_bounds: dict[int, tuple[torch.Tensor, torch.Tensor]],
             x: torch.Tensor, threat: ThreatModel) -> tuple[torch.Tensor, torch.Tensor]:
    """IBP's bounds of the input of ReLU ``index`` intersected with CROWN's, on the units IBP
    leaves unstable (a stable unit's relaxation is exact whatever its bounds)."""
    low, high = relu_bounds[index]
    flat_low, flat_high = low.flatten(1).clone(), high.flatten(1).clone()
    unstable = (flat_low < 0) & (flat_high > 0)
    units = unstable.any(dim=0).nonzero().squeeze(1)
    if len(units) == 0:
        return low, high
    shape = low.shape[1:]
    # the unit rows, through the affine layer before the ReLU once for the whole batch
    table = torch.zeros(len(units), shape.numel(), device=x.device, dtype=x.dtype)
    table[torch.arange(len(units)), units] = 1
    table, table_constant = table.view(1, len(units), *shape), table.new_zeros(1, len(units))
    stop = index
    if index > 0 and not isinstance(walk.rules[index - 1], (ReLURule, MaxPool2dRule)):
        stop = index - 1
        table, table_constant = walk.rules[stop].backward(table)
    position = torch.zeros(shape.numel(), dtype=torch.long, device=x.device)
    position[units] = torch.arange(len(units), device=x.device)
    counts = unstable.sum(dim=1)
    for images in _chunks(2 * counts, _row_elements(walk, stop)):
        rows = max(int(counts[images].max()), 1)
        mask = unstable[images]
        chosen = mask.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :rows]
        valid = mask.gather(1, chosen)
        coefficients = table[0, position[chosen]]
        constant = table_constant[0, position[chosen]]
        lower = _backward_lower(walk, stop, relu_bounds, images,
                                torch.cat([coefficients, -coefficients], dim=1),
                                torch.cat([constant, -constant], dim=1), x, threat)
        for flat, bound, pick in ((flat_low, lower[:, :rows], torch.maximum),
                                  (flat_high, -lower[:, rows:], torch.minimum)):
            current = flat[images].gather(1, chosen)
            flat[images] = flat[images].scatter(
                1, chosen, torch.where(valid, pick(current, bound), current))
    return flat_low.view_as(low), flat_high.view_as(high)


def preactivation_bounds(layers: list[nn.Module], x: torch.Tensor, threat: ThreatModel,
                         crown_neurons: int = 2048,
                         ) -> tuple[Walk, dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """The walk over ``layers`` and the lower and upper bounds of the input of every ReLU (keyed
    by its index): IBP's, intersected with CROWN's on the layers before it on the units IBP
    leaves unstable, where the ReLU has at most ``crown_neurons`` units and IBP is not already
    exact there (an affine layer on the input).

    The policy by cost: CROWN on a ReLU costs two backward passes per unstable unit through every
    layer before it (each about a forward pass of one input), so the widest layers, early in the
    network, are left to IBP; ``crown_neurons = 0`` gives CROWN-IBP."""
    walk, _, _ = _interval_walk(layers, x, threat, None, relu_inputs=True)
    return walk, _tightened(walk, x, threat, crown_neurons)


def _tightened(walk: Walk, x: torch.Tensor, threat: ThreatModel, crown_neurons: int,
               ) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """The walk's ReLU input bounds, tightened by CROWN where :func:`preactivation_bounds`
    says, from the first ReLU to the last."""
    relu_bounds = dict(walk.relu_inputs)
    for index in sorted(relu_bounds):
        if (relu_bounds[index][0][0].numel() <= crown_neurons
                and not _exact_by_intervals(walk.rules[:index])):
            relu_bounds[index] = _tighten(walk, index, relu_bounds, x, threat)
    return relu_bounds


def _crown_specification(walk: Walk, relu_bounds: dict[int, tuple[torch.Tensor, torch.Tensor]],
                         specification: torch.Tensor, x: torch.Tensor, threat: ThreatModel,
                         ) -> torch.Tensor:
    """CROWN lower bounds of ``specification · f`` (per input) given the ReLU bounds."""
    final = len(walk.rules) - 1
    lower = torch.empty(specification.shape[:2], device=x.device, dtype=x.dtype)
    rows = torch.full((len(x),), specification.shape[1], device=x.device)
    for images in _chunks(rows, _row_elements(walk, final)):
        coefficients, constant = walk.rules[final].backward(specification[images])
        lower[images] = _backward_lower(walk, final, relu_bounds, images, coefficients,
                                        constant, x, threat)
    return lower


def crown_bounds(layers: list[nn.Module], x: torch.Tensor, threat: ThreatModel,
                 specification: torch.Tensor, crown_neurons: int = 2048) -> torch.Tensor:
    """CROWN lower bounds of ``specification · f`` (per input, ``(batch, rows, K)``) over the
    threat ball (module docstring); ``crown_neurons = 0`` gives CROWN-IBP."""
    walk, relu_bounds = preactivation_bounds(layers, x, threat, crown_neurons)
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


def _interval_pairs(layers: list[nn.Module], x: torch.Tensor, threat: ThreatModel,
                    relu_inputs: bool = False) -> tuple[Walk, torch.Tensor]:
    """The IBP walk and its lower bounds of every class pair, ``(batch, K, K − 1)``."""
    num_classes = layers[-1].out_features
    pairs = pair_specification(num_classes, x.device, x.dtype)
    walk, low, _ = _interval_walk(layers, x, threat, pairs, relu_inputs)
    return walk, low.unflatten(1, (num_classes, num_classes - 1))


def interval_certificates(model: nn.Module, x: torch.Tensor, threat: ThreatModel,
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per input, the class whose IBP margin over the threat ball is the largest of all classes'
    and that margin: positive exactly where IBP certifies the input (:func:`certify_bounds`),
    and then the class is the clean prediction. Without a forward pass or a data-dependent
    shape, so that it exports (``torch.export``)."""
    margin, classes = _best_class(_interval_pairs(feed_forward_layers(model), x, threat)[1])
    return classes, margin


def certify_bounds(model: nn.Module, x: torch.Tensor, threat: ThreatModel,
                   method: str = "ibp", crown_neurons: int = 2048,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean predictions ``ŷ`` and the certified margin: the lower bound of
    ``min_{j≠ŷ} (f_ŷ − f_j)`` over the threat ball by ``method`` (``ibp``, ``crown-ibp``,
    ``crown``, or ``ibp+crown``, the larger of IBP's and CROWN's). A sample is certified where
    the margin is positive.

    Every class pair is bounded by intervals at the last layer (IBP's, or from the ReLU bounds
    CROWN's pass computed); where one class's pairs are all positive, that is ``ŷ`` without a
    clean forward pass, which runs on the other inputs only. Non-finite logits are refused;
    inputs of another floating dtype are converted (a warning)."""
    if method not in BOUND_METHODS:
        raise ValueError(f"method must be one of {BOUND_METHODS}, got {method!r}")
    layers = feed_forward_layers(model)
    x = as_model_dtype(x, model)
    num_classes = layers[-1].out_features
    rows = torch.arange(len(x), device=x.device)
    with torch.no_grad():
        walk, interval = _interval_pairs(layers, x, threat, relu_inputs=method != "ibp")
        if method == "ibp":
            predicted = _predictions(model, x, interval)
            return predicted, interval[rows, predicted].min(dim=1).values
        relu_bounds = _tightened(walk, x, threat, 0 if method == "crown-ibp" else crown_neurons)
        tightened = interval
        if relu_bounds:  # the pairs again, from the last ReLU's tightened bounds
            last = max(relu_bounds)
            low, high = relu_bounds[last]
            centre, radius = walk.interval((high + low) / 2, (high - low) / 2, last,
                                           specification=pair_specification(
                                               num_classes, x.device, x.dtype))
            tightened = (centre - radius).view_as(interval)
        predicted = _predictions(model, x, tightened)
        specification = margin_specification(predicted, num_classes, x.dtype)
        margin = _crown_specification(walk, relu_bounds, specification, x, threat)
        if method == "ibp+crown":
            margin = torch.maximum(margin, interval[rows, predicted])
    return predicted, margin.min(dim=1).values
