"""Per-operation rules of bound propagation: one small object per layer, independent of how the
layers are walked (a ``Sequential`` today, a traced graph next).

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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robustgate.models.normalize import Normalize

ELEMENTWISE = (Normalize, nn.BatchNorm1d, nn.BatchNorm2d)
AFFINE = (nn.Linear, nn.Conv2d, nn.Flatten, nn.AvgPool2d, *ELEMENTWISE)
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
    """``Normalize`` and batch normalization in eval mode: ``s ⊙ z + t`` per feature."""

    def __init__(self, layer: nn.Module, input_shape: torch.Size) -> None:
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
        view = (-1, *([1] * (len(input_shape) - 1)))
        self.scale, self.shift = scale.view(view), shift.view(view)

    def interval(self, centre: torch.Tensor, radius: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.addcmul(self.shift, centre, self.scale), radius * self.scale.abs()

    def backward(self, coefficients: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        constant = (coefficients * self.shift).flatten(2).sum(dim=2)
        return coefficients * self.scale, constant


class FlattenRule:
    """``nn.Flatten`` (of everything after the batch dimension)."""

    def __init__(self, layer: nn.Flatten, input_shape: torch.Size) -> None:
        if layer.start_dim != 1 or layer.end_dim != -1:
            raise ValueError("bound propagation covers nn.Flatten() of every dimension after "
                             "the batch only")
        self.input_shape = tuple(input_shape)

    def interval(self, centre: torch.Tensor, radius: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return centre.flatten(1), radius.flatten(1)

    def backward(self, coefficients: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return (coefficients.reshape(*coefficients.shape[:2], *self.input_shape),
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


def _centre_radius(low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The centre and radius of ``[low, high]`` (in two passes over memory)."""
    centre = torch.lerp(low, high, 0.5)
    return centre, high - centre


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
    """``nn.MaxPool2d``: monotone, so both ends go through it; no backward rule here."""

    def __init__(self, layer: nn.MaxPool2d) -> None:
        self.layer = layer

    def interval(self, centre: torch.Tensor, radius: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        return _centre_radius(self.layer(centre - radius), self.layer(centre + radius))

    def backward(self, coefficients: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise ValueError("CROWN does not bound max pooling here; use IBP (--method ibp)")


Rule = (LinearRule | Conv2dRule | ElementwiseRule | FlattenRule | AvgPool2dRule | ReLURule
        | MaxPool2dRule)


def rule_for(layer: nn.Module, input_shape: torch.Size) -> Rule:
    """The rule of ``layer`` for inputs of shape ``(batch, *input_shape)``."""
    if isinstance(layer, nn.Linear):
        return LinearRule(layer)
    if isinstance(layer, nn.Conv2d):
        return Conv2dRule(layer, input_shape)
    if isinstance(layer, ELEMENTWISE):
        return ElementwiseRule(layer, input_shape)
    if isinstance(layer, nn.Flatten):
        return FlattenRule(layer, input_shape)
    if isinstance(layer, nn.AvgPool2d):
        return AvgPool2dRule(layer, input_shape)
    if isinstance(layer, nn.ReLU):
        return ReLURule()
    if isinstance(layer, nn.MaxPool2d):
        return MaxPool2dRule(layer)
    raise ValueError(f"bound propagation does not cover {type(layer).__name__} layers")
