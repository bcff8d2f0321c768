"""Per-operation rules of bound propagation: one small object per operation of a traced graph
(``certify.graph``), independent of how the graph is walked.

Every rule has an interval rule in centre/radius form, ``interval(centre, radius)``: an affine
layer takes the centre through itself and the radius through its absolute values, so a run of
affine layers needs no conversion to and from lower/upper ends; a monotone layer (ReLU, max
pooling) takes both ends and hands back a centre and a radius.

An affine rule also has a backward linear rule, ``backward(coefficients)``: for coefficients
``Λ`` of shape ``(batch, rows, *out)`` on the layer's output, ``Λ·L(z) = (Λ·M) z + Λ·b``; it
returns ``Λ·M`` of shape ``(batch, rows, *in)`` (by the explicit transposed operation:
``Λ·W`` for a linear layer, ``conv_transpose2d`` for a convolution) and the constant ``Λ·b`` of
shape ``(batch, rows)``. ``batch`` may be 1 for coefficients shared by every input. The ReLU
rule's backward takes the pre-activation bounds too (:meth:`ReLURule.backward`).

The rules of two operands and more (:class:`SumRule`, :class:`ConcatRule`) take a list of
centres and a list of radii, and their backward rule hands back one coefficient tensor per
operand.

Batch normalization in eval mode is the per-feature affine map of its running statistics. In
train mode (certified training only; a certificate refuses it), it is the affine map of the
mean and biased variance over the batch of the interval centres at its input
(:class:`BatchStatisticsRule`): the statistics the clean pass would use on the clean inputs,
taken on the centres of the boxes, as CROWN-IBP's training takes them on the batch; the bound
pass leaves the running statistics alone (the clean forward pass updates them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustgate.models.normalize import Normalize

ELEMENTWISE = (Normalize, nn.BatchNorm1d, nn.BatchNorm2d)
AFFINE = (nn.Linear, nn.Conv2d, nn.Flatten, nn.AvgPool2d, nn.AdaptiveAvgPool2d, *ELEMENTWISE)
MONOTONE = (nn.ReLU, nn.MaxPool2d)


class LinearRule:
    """``nn.Linear``: ``W z + b``."""

    def __init__(self, layer: nn.Linear) -> None:
        self.weight, self.bias = layer.weight, layer.bias

    def interval(self, centre: torch.Tensor, radius: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return F.linear(centre, self.weight, self.bias), F.linear(radius, self.weight.abs())

    def backward(self, coefficients: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        constant = (coefficients @ self.bias if self.bias is not None
                    else coefficients.new_zeros(coefficients.shape[:2]))
        return coefficients @ self.weight, constant


class Conv2dRule:
    """``nn.Conv2d`` with zero padding; its transpose is ``conv_transpose2d`` with the output
    padding that restores the input's size for the stride."""

    def __init__(self, layer: nn.Conv2d, input_shape: torch.Size) -> None:
        self.layer = layer
        self.input_shape = tuple(input_shape)
        self.output_padding = _output_padding(self.input_shape[1:], layer.kernel_size,
                                              layer.stride, layer.padding, layer.dilation)

    def interval(self, centre: torch.Tensor, radius: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.layer
        return layer(centre), F.conv2d(radius, layer.weight.abs(), None, layer.stride,
                                       layer.padding, layer.dilation, layer.groups)

    def backward(self, coefficients: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.layer
        batch, rows = coefficients.shape[:2]
        flat = coefficients.reshape(batch * rows, *coefficients.shape[2:])
        transposed = F.conv_transpose2d(flat, layer.weight, None, layer.stride, layer.padding,
                                        self.output_padding, layer.groups, layer.dilation)
        constant = (coefficients.sum(dim=(3, 4)) @ layer.bias if layer.bias is not None
                    else coefficients.new_zeros(batch, rows))
        return transposed.view(batch, rows, *self.input_shape), constant


def _output_padding(size: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...],
                    padding: tuple[int, ...], dilation: tuple[int, ...]) -> tuple[int, ...]:
    """The ``output_padding`` that makes the transposed convolution give back inputs of
    ``size``: the rows and columns the forward convolution's stride left unread."""
    padded = []
    for length, k, s, p, d in zip(size, kernel, stride, padding, dilation, strict=True):
        out = (length + 2 * p - d * (k - 1) - 1) // s + 1
        padded.append(length - ((out - 1) * s - 2 * p + d * (k - 1) + 1))
    return tuple(padded)


class ElementwiseRule:
    """``s ⊙ z + t`` per feature: ``Normalize``, batch normalization in eval mode, and the
    scalings and shifts by constants of a traced forward (``scale`` and ``shift`` broadcast onto
    one input, without its batch dimension)."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor) -> None:
        self.scale, self.shift = scale, shift

    def interval(self, centre: torch.Tensor, radius: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.addcmul(self.shift, centre, self.scale), radius * self.scale.abs()

    def backward(self, coefficients: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        constant = (coefficients * self.shift).flatten(2).sum(dim=2)
        return coefficients * self.scale, constant


def elementwise_rule(layer: nn.Module, input_shape: torch.Size) -> ElementwiseRule:
    """The rule of ``Normalize`` or of batch normalization in eval mode (running statistics)."""
    if isinstance(layer, Normalize):
        scale = 1 / layer.std.flatten()
        shift = -layer.mean.flatten() * scale
    else:
        scale = 1 / torch.sqrt(layer.running_var + layer.eps)
        if layer.weight is not None:
            scale = layer.weight * scale
        shift = -layer.running_mean * scale
        if layer.bias is not None:
            shift = shift + layer.bias
    return ElementwiseRule(*_per_channel(scale, shift, input_shape))


def _per_channel(scale: torch.Tensor, shift: torch.Tensor, input_shape: torch.Size
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``scale`` and ``shift`` shaped to broadcast onto inputs of ``input_shape``."""
    view = (-1, *([1] * (len(input_shape) - 1)))
    return scale.view(view), shift.view(view)


class BatchStatisticsRule:
    """Batch normalization in train mode, for certified training (module docstring): the affine
    map of the batch statistics of the interval centres, fixed at the first interval pass."""

    def __init__(self, layer: nn.BatchNorm1d | nn.BatchNorm2d) -> None:
        self.layer = layer
        self.affine: ElementwiseRule | None = None

    def interval(self, centre: torch.Tensor, radius: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.affine is None:
            layer = self.layer
            dims = [0, *range(2, centre.dim())]
            mean, variance = centre.mean(dim=dims), centre.var(dim=dims, unbiased=False)
            scale = 1 / torch.sqrt(variance + layer.eps)
            if layer.weight is not None:
                scale = layer.weight * scale
            shift = -mean * scale
            if layer.bias is not None:
                shift = shift + layer.bias
            self.affine = ElementwiseRule(*_per_channel(scale, shift, centre.shape[1:]))
        return self.affine.interval(centre, radius)

    def backward(self, coefficients: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.affine is None:
            raise ValueError("batch statistics are taken in an interval pass first")
        return self.affine.backward(coefficients)


class ReshapeRule:
    """A reshape that keeps the batch dimension (``nn.Flatten``, ``flatten``, ``view``,
    ``reshape``): from inputs of ``input_shape`` to outputs of ``output_shape`` (without the
    batch dimension)."""

    def __init__(self, input_shape: torch.Size, output_shape: torch.Size) -> None:
        self.input_shape, self.output_shape = tuple(input_shape), tuple(output_shape)

    def interval(self, centre: torch.Tensor, radius: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (-1, *self.output_shape)
        return centre.reshape(shape), radius.reshape(shape)

    def backward(self, coefficients: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (coefficients.reshape(*coefficients.shape[:2], *self.input_shape),
                coefficients.new_zeros(coefficients.shape[:2]))


class IdentityRule:
    """An operation that hands its input on (dropout in eval mode)."""

    def interval(self, centre: torch.Tensor, radius: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return centre, radius

    def backward(self, coefficients: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return coefficients, coefficients.new_zeros(coefficients.shape[:2])


class SumRule:
    """``Σ_k sign_k · z_k`` of operands of one shape (a residual addition; a subtraction)."""

    def __init__(self, signs: tuple[float, ...]) -> None:
        self.signs = signs

    def interval(self, centres: list[torch.Tensor], radii: list[torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        centre = sum(sign * centre for sign, centre in zip(self.signs, centres, strict=True))
        return centre, sum(radii)

    def backward(self, coefficients: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        return ([coefficients if sign == 1 else sign * coefficients for sign in self.signs],
                coefficients.new_zeros(coefficients.shape[:2]))


class ConcatRule:
    """``torch.cat`` of its operands along a dimension after the batch dimension (``dim`` of the
    operands; their sizes along it are ``sizes``)."""

    def __init__(self, dim: int, sizes: list[int]) -> None:
        self.dim, self.sizes = dim, sizes

    def interval(self, centres: list[torch.Tensor], radii: list[torch.Tensor]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat(centres, dim=self.dim), torch.cat(radii, dim=self.dim)

    def backward(self, coefficients: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        return (list(coefficients.split(self.sizes, dim=self.dim + 1)),
                coefficients.new_zeros(coefficients.shape[:2]))


class AvgPool2dRule:
    """``nn.AvgPool2d``: non-negative weights, so the radius goes through the layer itself; its
    transpose is a depthwise ``conv_transpose2d`` with the constant kernel ``1/divisor``."""

    def __init__(self, layer: nn.AvgPool2d, input_shape: torch.Size) -> None:
        self.layer = layer
        self.input_shape = tuple(input_shape)

    def interval(self, centre: torch.Tensor, radius: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layer(centre), self.layer(radius)

    def backward(self, coefficients: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        layer = self.layer
        kernel, stride, padding = (_pair(value) for value in (
            layer.kernel_size, layer.stride or layer.kernel_size, layer.padding))
        if layer.ceil_mode or (any(padding) and not layer.count_include_pad):
            raise ValueError("CROWN bounds average pooling without ceil_mode, and with "
                             "count_include_pad where it pads, only; use IBP (--method ibp)")
        divisor = layer.divisor_override or kernel[0] * kernel[1]
        channels = self.input_shape[0]
        weight = coefficients.new_full((channels, 1, *kernel), 1 / divisor)
        output_padding = _output_padding(self.input_shape[1:], kernel, stride, padding, (1, 1))
        batch, rows = coefficients.shape[:2]
        flat = coefficients.reshape(batch * rows, *coefficients.shape[2:])
        transposed = F.conv_transpose2d(flat, weight, None, stride, padding, output_padding,
                                        channels)
        return (transposed.view(batch, rows, *self.input_shape),
                coefficients.new_zeros(batch, rows))


def _fixed_windows(layer: nn.AdaptiveAvgPool2d, input_shape: torch.Size) -> nn.AvgPool2d:
    """Adaptive average pooling as the average pooling of equal windows it is where every output
    size divides the input size."""
    sizes = _pair(layer.output_size)
    sizes = tuple(size if out is None else out
                  for size, out in zip(input_shape[1:], sizes, strict=True))
    if any(size % out for size, out in zip(input_shape[1:], sizes, strict=True)):
        raise ValueError(f"bound propagation covers adaptive average pooling to sizes that "
                         f"divide the input's, not {tuple(input_shape[1:])} to {sizes}")
    kernel = tuple(size // out for size, out in zip(input_shape[1:], sizes, strict=True))
    return nn.AvgPool2d(kernel, kernel)


def _centre_radius(low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The centre and radius of ``[low, high]``, both the caller's own tensors: computed in
    their place where no gradient flows through them (a certificate: no new tensor of the
    layer's size), out of place under autograd (certified training)."""
    if low.requires_grad or high.requires_grad:
        centre = torch.lerp(low, high, 0.5)
        return centre, high - centre
    centre = low.lerp_(high, 0.5)
    return centre, high.sub_(centre)


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (value[0], value[1])


class ReLURule:
    """``max(z, 0)``. Backward, for coefficients on its output and the bounds ``[l, u]`` of its
    input: on an unstable unit the upper line ``u (z − l)/(u − l)`` where the coefficient is
    negative and the lower line ``a·z`` (``a = [u ≥ −l]``) where it is positive (a lower bound of
    ``Λ·relu(z)``); a stable unit is the identity or zero."""

    def interval(self, centre: torch.Tensor, radius: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return _centre_radius((centre - radius).relu_(), (centre + radius).relu_())

    @staticmethod
    def relaxation(low: torch.Tensor, high: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Slopes of the lower line, slopes and intercepts of the upper line, per unit."""
        unstable = (low < 0) & (high > 0)
        active = (low >= 0).to(high.dtype)
        denominator = torch.where(unstable, high - low, torch.ones_like(high))
        upper_slope = torch.where(unstable, high / denominator, active)
        upper_intercept = torch.where(unstable, -high * low / denominator,
                                      torch.zeros_like(high))
        lower_slope = torch.where(unstable, (high >= -low).to(high.dtype), active)
        return lower_slope, upper_slope, upper_intercept

    def backward(self, coefficients: torch.Tensor, low: torch.Tensor, high: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """``low`` and ``high`` of shape ``(batch, *in)``, the batch of ``coefficients``."""
        lower_slope, upper_slope, upper_intercept = self.relaxation(low, high)
        positive = coefficients.clamp(min=0)
        intercept = upper_intercept.flatten(1).unsqueeze(2)
        constant = (coefficients.flatten(2) @ intercept - positive.flatten(2) @ intercept)
        transposed = coefficients * upper_slope.unsqueeze(1)
        transposed.addcmul_(positive, (lower_slope - upper_slope).unsqueeze(1))
        return transposed, constant.squeeze(2)


class MaxPool2dRule:
    """``nn.MaxPool2d``: monotone, so both ends go through it. No backward rule: CROWN refuses
    a graph with max pooling before it bounds anything (a sound linear relaxation of a maximum
    of several unstable inputs is not built here)."""

    def __init__(self, layer: nn.MaxPool2d) -> None:
        self.layer = layer

    def interval(self, centre: torch.Tensor, radius: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return _centre_radius(self.layer(centre - radius), self.layer(centre + radius))

    def backward(self, coefficients: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise ValueError(MAX_POOLING_REFUSAL)


MAX_POOLING_REFUSAL = "CROWN does not bound max pooling here; use IBP (--method ibp)"
Rule = (LinearRule | Conv2dRule | ElementwiseRule | BatchStatisticsRule | ReshapeRule
        | IdentityRule | AvgPool2dRule | ReLURule | MaxPool2dRule | SumRule | ConcatRule)
MULTIPLE_OPERANDS = (SumRule, ConcatRule)
"""The rules of two operands or more."""


def rule_for(layer: nn.Module, input_shape: torch.Size) -> Rule:
    """The rule of ``layer`` for inputs of shape ``(batch, *input_shape)``."""
    if isinstance(layer, nn.Linear):
        return LinearRule(layer)
    if isinstance(layer, nn.Conv2d):
        return Conv2dRule(layer, input_shape)
    if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)) and (
            layer.training or layer.running_var is None):
        return BatchStatisticsRule(layer)
    if isinstance(layer, ELEMENTWISE):
        return elementwise_rule(layer, input_shape)
    if isinstance(layer, nn.Flatten):
        return ReshapeRule(input_shape, layer(torch.empty(1, *input_shape)).shape[1:])
    if isinstance(layer, nn.AvgPool2d):
        return AvgPool2dRule(layer, input_shape)
    if isinstance(layer, nn.AdaptiveAvgPool2d):
        return AvgPool2dRule(_fixed_windows(layer, input_shape), input_shape)
    if isinstance(layer, nn.ReLU):
        return ReLURule()
    if isinstance(layer, nn.MaxPool2d):
        return MaxPool2dRule(layer)
    raise ValueError(f"bound propagation does not cover {type(layer).__name__} layers")
