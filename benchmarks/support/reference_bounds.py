"""The reference: robustgate's bound propagation as it was before the per-operation rules
(``robustgate.certify.bounds`` at 31b5e7b, unchanged below this paragraph but for the layer
checks, the margin specification and the input box, which it takes from the library: they are
the same there and not what is compared), kept as the in-process reference that
``benchmarks/bounds.py`` times the new implementation against and ``tests/test_bounds.py``
compares its bounds with. Not part of the library: remove it with the
benchmark's old-against-new rows once they are no longer wanted.

Deterministic certificates by bound propagation (DESIGN.md section 3): interval bound
propagation (IBP; Gowal et al., 2018) and backward linear bounds (CROWN; Zhang et al., 2018) for
feed-forward networks.

Both bound the logit differences ``f_ŷ − f_j`` (the specification ``C``, one row per ``j ≠ ŷ``)
over the threat ball intersected with the domain; a sample is certified when every lower bound
is positive. Bounding the differences, not the logits one by one, folds ``C`` into the last
linear layer (IBP) or starts the backward pass from it (CROWN).

- IBP pushes boxes in centre/radius form: an affine layer takes the centre through itself and
  the radius through its absolute values; monotone layers (ReLU, max pooling) take both ends.
  Over an L2 ball, the first linear layer (after elementwise scalings such as ``Normalize``) is
  bounded exactly by its rows' L2 norms, intersected with the box the domain gives.
- CROWN bounds ``C·f(x) ≥ Λ·x + β`` by passing linear coefficients backwards: through affine
  layers by their transpose (a vector-Jacobian product), through an unstable ReLU with
  pre-activation bounds ``[l, u]`` by the upper line ``u (z − l)/(u − l)`` where the coefficient
  is negative and the lower line ``a·z`` (``a = [u ≥ −l]``) where it is positive. The
  pre-activation bounds of every ReLU come from CROWN on the layers before it (IBP where a layer
  has more than ``crown_neurons`` units), intersected with IBP's. At the input, ``Λ·x`` is
  minimized over the box (Linf) or the L2 ball.

Interval bounds are monotone under inclusion of boxes: IBP certifying ``B(x, r)`` certifies every
box inside it. CROWN's relaxation adapts to the region and carries no such guarantee.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustgate.certify.bounds import input_box, margin_specification
from robustgate.certify.rules import ELEMENTWISE, MONOTONE
from robustgate.models import MLP
from robustgate.models.normalize import Normalize
from robustgate.threat import ThreatModel

BOUND_METHODS = ("ibp", "crown", "ibp+crown")


def reference_layers(model: nn.Module) -> list[nn.Module]:
    """The layers of a feed-forward model in order: an ``nn.Sequential``'s, or the ``layers`` of
    robustgate's feed-forward architectures (an MLP's after flattening); the library itself
    bounds the traced forward (``certify.graph``)."""
    if isinstance(model, nn.Sequential):
        return list(model)
    return [nn.Flatten(), *model.layers] if isinstance(model, MLP) else list(model.layers)


def _affine_abs(layer: nn.Module, radius: torch.Tensor) -> torch.Tensor:
    """``|L|`` applied to a radius: the layer with absolute weights and no bias."""
    if isinstance(layer, nn.Linear):
        return F.linear(radius, layer.weight.abs())
    if isinstance(layer, nn.Conv2d):
        return F.conv2d(radius, layer.weight.abs(), None, layer.stride, layer.padding,
                        layer.dilation, layer.groups)
    if isinstance(layer, (nn.Flatten, nn.AvgPool2d)):
        return layer(radius)
    return radius * _elementwise_scale(layer, radius).abs()


def _elementwise_scale(layer: nn.Module, like: torch.Tensor) -> torch.Tensor:
    """The per-feature factor of an elementwise affine layer, shaped to broadcast on ``like``."""
    if isinstance(layer, Normalize):
        scale = 1 / layer.std
    else:
        scale = 1 / torch.sqrt(layer.running_var + layer.eps)
        if layer.weight is not None:
            scale = layer.weight * scale
    return scale.view(1, -1, *([1] * (like.dim() - 2))) if like.dim() > 2 else scale.view(1, -1)


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
            factor = _elementwise_scale(layer, centre)
            centre, scale = layer(centre), scale * factor
        elif isinstance(layer, nn.Flatten):
            centre, scale = layer(centre), layer(scale)
        elif isinstance(layer, nn.Linear) and index == len(layers) - 1 and (
                specification is not None):
            weight = specification @ layer.weight
            norms = ((weight * scale.unsqueeze(1)) ** 2).sum(dim=2).sqrt()
            out = (weight @ centre.unsqueeze(2)).squeeze(2) + specification @ layer.bias
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
    the threat ball around ``x`` intersected with the domain."""
    low, high = input_box(x, threat)
    start = 0
    if threat.norm == "l2":
        exact = _l2_first_layer(layers, x, threat.eps, specification)
        if exact is not None:
            start, ball_low, ball_high = exact
            box_low, box_high = _propagate(layers[:start], low, high,
                                           specification if start == len(layers) else None)
            low, high = torch.maximum(ball_low, box_low), torch.minimum(ball_high, box_high)
    return _propagate(layers[start:], low, high, specification)


def _propagate(layers: list[nn.Module], low: torch.Tensor, high: torch.Tensor,
               specification: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    for position, layer in enumerate(layers):
        last = position == len(layers) - 1
        if isinstance(layer, MONOTONE):
            low, high = layer(low), layer(high)
            continue
        centre, radius = (high + low) / 2, (high - low) / 2
        if last and specification is not None and isinstance(layer, nn.Linear):
            weight = specification @ layer.weight
            bias = specification @ layer.bias
            centre = (weight @ centre.unsqueeze(2)).squeeze(2) + bias
            radius = (weight.abs() @ radius.unsqueeze(2)).squeeze(2)
        else:
            centre, radius = layer(centre), _affine_abs(layer, radius)
        low, high = centre - radius, centre + radius
    return low, high


def _backward_affine(layer: nn.Module, coefficients: torch.Tensor, input_shape: torch.Size,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``Λ·L(z) = (Λ·M) z + Λ·L(0)`` for an affine layer ``L``: the new coefficients (a
    vector-Jacobian product) and the constant, for ``coefficients`` of shape
    ``(batch, rows, *out)``."""
    batch, rows = coefficients.shape[:2]
    zeros = torch.zeros(batch * rows, *input_shape, device=coefficients.device,
                        dtype=coefficients.dtype, requires_grad=True)
    with torch.enable_grad():
        out = layer(zeros)
        flat = coefficients.reshape(batch * rows, *out.shape[1:])
        (transposed,) = torch.autograd.grad(out, zeros, flat)
    constant = (flat * out.detach()).flatten(1).sum(dim=1).view(batch, rows)
    return transposed.view(batch, rows, *input_shape), constant


def _relu_relaxation(low: torch.Tensor, high: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slopes of the lower line, slopes and intercepts of the upper line, per unit."""
    unstable = (low < 0) & (high > 0)
    active = low >= 0
    denominator = torch.where(unstable, high - low, torch.ones_like(high))
    upper_slope = torch.where(unstable, high / denominator, active.to(high.dtype))
    upper_intercept = torch.where(unstable, -high * low / denominator, torch.zeros_like(high))
    lower_slope = torch.where(unstable, (high >= -low).to(high.dtype), active.to(high.dtype))
    return lower_slope, upper_slope, upper_intercept


def _crown_lower(layers: list[nn.Module], shapes: list[torch.Size],
                 relu_bounds: dict[int, tuple[torch.Tensor, torch.Tensor]],
                 coefficients: torch.Tensor, x: torch.Tensor, threat: ThreatModel,
                 ) -> torch.Tensor:
    """The CROWN lower bound of ``coefficients · (layers applied to x')`` over the ball, given
    the pre-activation bounds of every ReLU (``relu_bounds[index]``)."""
    constant = torch.zeros(coefficients.shape[:2], device=x.device, dtype=x.dtype)
    for index in reversed(range(len(layers))):
        layer = layers[index]
        if isinstance(layer, nn.ReLU):
            lower_slope, upper_slope, upper_intercept = _relu_relaxation(*relu_bounds[index])
            positive, negative = coefficients.clamp(min=0), coefficients.clamp(max=0)
            constant = constant + (negative * upper_intercept.unsqueeze(1)).flatten(2).sum(2)
            coefficients = (positive * lower_slope.unsqueeze(1)
                            + negative * upper_slope.unsqueeze(1))
        elif isinstance(layer, nn.MaxPool2d):
            raise ValueError("CROWN does not bound max pooling here; use IBP (--method ibp)")
        else:
            coefficients, added = _backward_affine(layer, coefficients, shapes[index])
            constant = constant + added
    flat = coefficients.flatten(2)
    if threat.norm == "linf":
        low, high = input_box(x, threat)
        low, high = low.flatten(1).unsqueeze(1), high.flatten(1).unsqueeze(1)
        value = (flat.clamp(min=0) * low + flat.clamp(max=0) * high).sum(2)
    else:
        value = (flat * x.flatten(1).unsqueeze(1)).sum(2) - threat.eps * flat.norm(dim=2)
    return value + constant


def preactivation_bounds(layers: list[nn.Module], x: torch.Tensor, threat: ThreatModel,
                         crown_neurons: int = 2048,
                         ) -> tuple[list[torch.Size], dict[int, tuple[torch.Tensor, torch.Tensor]]]:
    """Every layer's input shape, and the lower and upper bounds of the input of every ReLU
    (keyed by its index): CROWN on the layers before it where it has at most ``crown_neurons``
    units, intersected with IBP."""
    shapes, value = [], x
    for layer in layers:
        shapes.append(value.shape[1:])
        value = layer(value)
    relu_bounds: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for index, layer in enumerate(layers):
        if not isinstance(layer, nn.ReLU):
            continue
        low, high = interval_bounds(layers[:index], x, threat)
        units = low[0].numel()
        if units <= crown_neurons:
            identity = torch.eye(units, device=x.device, dtype=x.dtype).view(
                1, units, *shapes[index])
            identity = identity.expand(len(x), *identity.shape[1:])
            crown_low = _crown_lower(layers[:index], shapes, relu_bounds, identity, x, threat)
            crown_high = -_crown_lower(layers[:index], shapes, relu_bounds, -identity, x, threat)
            low = torch.maximum(low, crown_low.view_as(low))
            high = torch.minimum(high, crown_high.view_as(high))
        relu_bounds[index] = (low, high)
    return shapes, relu_bounds


def crown_bounds(layers: list[nn.Module], x: torch.Tensor, threat: ThreatModel,
                 specification: torch.Tensor, crown_neurons: int = 2048) -> torch.Tensor:
    """CROWN lower bounds of ``specification · f`` over the threat ball (module docstring)."""
    shapes, relu_bounds = preactivation_bounds(layers, x, threat, crown_neurons)
    final = layers[-1]
    coefficients = specification @ final.weight
    bias = specification @ final.bias
    return _crown_lower(layers[:-1], shapes, relu_bounds,
                        coefficients.view(*coefficients.shape[:2], *shapes[-1]), x,
                        threat) + bias


def certify_bounds(model: nn.Module, x: torch.Tensor, threat: ThreatModel,
                   method: str = "ibp", crown_neurons: int = 2048,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean predictions ``ŷ`` and the certified margin: the lower bound of
    ``min_{j≠ŷ} (f_ŷ − f_j)`` over the threat ball by ``method`` (``ibp``, ``crown``, or
    ``ibp+crown``, the larger of the two). A sample is certified where the margin is positive."""
    if method not in BOUND_METHODS:
        raise ValueError(f"method must be one of {BOUND_METHODS}, got {method!r}")
    layers = reference_layers(model)
    with torch.no_grad():
        logits = model(x)
        predicted = logits.argmax(dim=1)
        specification = margin_specification(predicted, logits.shape[1], logits.dtype)
        margins = []
        if "ibp" in method:
            margins.append(interval_bounds(layers, x, threat, specification)[0])
        if "crown" in method:
            margins.append(crown_bounds(layers, x, threat, specification, crown_neurons))
    margin = torch.stack(margins).max(dim=0).values.min(dim=1).values
    return predicted, margin
