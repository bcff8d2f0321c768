"""A model's forward traced (``torch.fx`` symbolic tracing) into the graph of operations that bound
propagation walks: what is bounded is the traced forward itself, whatever attributes the model
has.

The tracer keeps the modules that have a rule (``Linear``, ``Conv2d``, batch normalization,
``Normalize``, ``ReLU``, average, adaptive average and max pooling, ``Flatten``, ``Dropout``,
``Identity``) as single operations and traces through every other module. The functions and
tensor methods covered are ReLU, the residual sum and difference of two tensors, ``cat``,
``flatten``/``view``/``reshape``, average, adaptive average and max pooling, and scalings and
shifts by constants (numbers, or tensors the model holds, such as a normalization's mean and
standard deviation). Shape arithmetic (``x.size(0)``, ``x.shape``) is evaluated on the way. Any
other operation (a module, function or method) is refused by name when the model is traced,
before any bound is computed.

Operation 0 is the input; every other operation names the earlier operations it reads
(``operands``), in an order where operands come first. The last operation is the output.
"""

from __future__ import annotations

import operator
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from robustgate.certify.rules import (
    AFFINE,
    MONOTONE,
    ConcatRule,
    ElementwiseRule,
    IdentityRule,
    ReLURule,
    ReshapeRule,
    Rule,
    SumRule,
    rule_for,
)

LEAF_MODULES = (*AFFINE, *MONOTONE, nn.Dropout, nn.Identity)
"""The modules kept as single operations (every other module is traced through)."""

_RELU = {F.relu, torch.relu, "relu"}
_SUMS = {operator.add: 1.0, torch.add: 1.0, "add": 1.0,
         operator.sub: -1.0, torch.sub: -1.0, "sub": -1.0}
_PRODUCTS = {operator.mul, torch.mul, "mul"}
_QUOTIENTS = {operator.truediv, torch.div, "div"}
_RESHAPES = {torch.flatten, torch.reshape, "flatten", "view", "reshape"}
_POOLS: dict[Any, Callable[..., nn.Module]] = {
    F.avg_pool2d: nn.AvgPool2d, F.adaptive_avg_pool2d: nn.AdaptiveAvgPool2d,
    F.max_pool2d: nn.MaxPool2d}
_SHAPE_METHODS = {"size", "dim"}
_PASS_THROUGH = {"contiguous"}


@dataclass(frozen=True)
class Operation:
    """One operation of the traced forward: its name in the trace, the operations it reads and
    how its rule is built from the centres of its operands (``build(centres) -> Rule``)."""

    name: str
    operands: tuple[int, ...]
    build: Callable[[list[torch.Tensor]], Rule]


@dataclass(frozen=True)
class BoundGraph:
    """A traced forward: ``operations[0]`` is the input, ``operations[-1]`` the output (a
    ``nn.Linear``, ``last_layer``); ``dropouts`` are refused in train mode with ``p > 0``;
    ``modules`` are the modules the forward calls, by their names in the model."""

    operations: list[Operation]
    last_layer: nn.Linear
    dropouts: list[nn.Dropout]
    modules: tuple[tuple[str, nn.Module], ...]

    def calls_the_modules_of(self, model: nn.Module) -> bool:
        """Whether ``model`` still holds the modules the trace calls, under the same names."""
        current = dict(model.named_modules())
        return all(current.get(name) is module for name, module in self.modules)

    def check_state(self) -> None:
        """Refuse a state of the model the graph's rules do not cover."""
        for dropout in self.dropouts:
            if dropout.training and dropout.p > 0:
                raise ValueError("bound propagation covers dropout in eval mode (or p = 0) only")


class _Tracer(fx.Tracer):
    def is_leaf_module(self, module: nn.Module, name: str) -> bool:
        return isinstance(module, LEAF_MODULES) or super().is_leaf_module(module, name)


_GRAPHS: weakref.WeakKeyDictionary[nn.Module, BoundGraph] = weakref.WeakKeyDictionary()


def bound_graph(model: nn.Module) -> BoundGraph:
    """The traced graph of ``model``, kept while the model lives and traced again where a module
    it calls was replaced since; raises a ``ValueError`` naming the first operation without a
    rule. (A forward whose Python code reads other attributes is traced as it ran the first
    time.)"""
    graph = _GRAPHS.get(model)
    if graph is None or not graph.calls_the_modules_of(model):
        graph = _GRAPHS[model] = _trace(model)
    return graph


def _trace(original: nn.Module) -> BoundGraph:
    model = nn.Sequential(original) if isinstance(original, LEAF_MODULES) else original
    try:
        traced = _Tracer().trace(model)
    except Exception as error:  # noqa: BLE001 - torch.fx raises many kinds on untraceable code
        raise ValueError(f"bound propagation traces the model's forward (torch.fx), which "
                         f"failed on {type(model).__name__}: {error}") from None
    modules = dict(model.named_modules())
    index: dict[fx.Node, int] = {}
    shapes: set[fx.Node] = set()
    constants: dict[fx.Node, Any] = {}
    operations: list[Operation] = []
    dropouts: list[nn.Dropout] = []
    output: fx.Node | None = None
    for node in traced.nodes:
        if node.op == "placeholder":
            if operations:
                raise ValueError("bound propagation covers models of one input")
            index[node] = 0
            operations.append(Operation(node.name, (), lambda centres: IdentityRule()))
        elif node.op == "get_attr":
            constants[node] = _attribute(model, node.target)
        elif node.op == "output":
            output = node.args[0]
        elif _is_shape(node, index, shapes):
            shapes.add(node)
        else:
            alias = _alias(node, modules, index, dropouts)
            if alias is not None:
                index[node] = alias
                continue
            operands, build = _operation(node, modules, index, constants, shapes)
            index[node] = len(operations)
            operations.append(Operation(node.name, operands, build))
    if not isinstance(output, fx.Node) or output not in index:
        raise ValueError("bound propagation covers models that return one tensor of logits")
    last = output
    layer = modules.get(last.target) if last.op == "call_module" else None
    if index[last] != len(operations) - 1 or not isinstance(layer, nn.Linear):
        raise ValueError("bound propagation needs a model whose forward ends in a Linear layer")
    used = _used(operations)
    if not all(used[1:]):
        unused = [operation.name for operation, read in zip(operations, used, strict=True)
                  if not read]
        raise ValueError(f"bound propagation covers forwards whose every operation reaches the "
                         f"output; {', '.join(unused[1:])} do not")
    names = {id(module): name for name, module in original.named_modules()}
    called = tuple((names[id(modules[node.target])], modules[node.target])
                   for node in traced.nodes if node.op == "call_module")
    return BoundGraph(operations, layer, dropouts, called)


def _used(operations: list[Operation]) -> list[bool]:
    """Whether each operation's output is read (the last one: by the caller)."""
    used = [False] * len(operations)
    used[-1] = True
    for operation in operations:
        for operand in operation.operands:
            used[operand] = True
    return used


def _attribute(model: nn.Module, target: str) -> Any:
    value: Any = model
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _is_shape(node: fx.Node, index: dict[fx.Node, int], shapes: set[fx.Node]) -> bool:
    """Whether ``node`` computes with shapes, not values: ``x.size()``, ``x.shape``, ``x.dim()``
    and arithmetic on those."""
    if node.op == "call_method" and node.target in _SHAPE_METHODS:
        return True
    if node.op == "call_function" and node.target is getattr and node.args[1] in ("shape", "ndim"):
        return True
    operands = node.all_input_nodes
    return bool(operands) and all(operand in shapes for operand in operands) and not any(
        operand in index for operand in operands)


def _alias(node: fx.Node, modules: dict[str, nn.Module], index: dict[fx.Node, int],
           dropouts: list[nn.Dropout]) -> int | None:
    """The operation that ``node`` hands on unchanged (identity, dropout in eval mode,
    ``contiguous``), or ``None``."""
    if node.op == "call_module" and isinstance(modules[node.target], (nn.Identity, nn.Dropout)):
        if isinstance(modules[node.target], nn.Dropout):
            dropouts.append(modules[node.target])
        return _operand(node, node.args[0], index)
    if node.op == "call_method" and node.target in _PASS_THROUGH:
        return _operand(node, node.args[0], index)
    return None


def _operand(node: fx.Node, argument: Any, index: dict[fx.Node, int]) -> int:
    if not isinstance(argument, fx.Node) or argument not in index:
        raise ValueError(f"bound propagation: {_describe(node)} needs a tensor computed from the "
                         f"input as its operand")
    return index[argument]


def _describe(node: fx.Node) -> str:
    target = node.target
    name = target if isinstance(target, str) else getattr(target, "__name__", repr(target))
    kind = {"call_module": "module", "call_method": "method"}.get(node.op, "function")
    return f"the {kind} {name!r} (at {node.name})"


def _method_or_function(node: fx.Node) -> Any:
    return node.target if node.op in ("call_method", "call_function") else None


def _operation(node: fx.Node, modules: dict[str, nn.Module], index: dict[fx.Node, int],
               constants: dict[fx.Node, Any], shapes: set[fx.Node],
               ) -> tuple[tuple[int, ...], Callable[[list[torch.Tensor]], Rule]]:
    """The operands and the rule builder of a traced operation; raises for one without a
    rule."""
    if node.op == "call_module":
        module = modules[node.target]
        if not isinstance(module, LEAF_MODULES):
            raise ValueError(f"bound propagation has no rule for {type(module).__name__} "
                             f"(the module {node.target!r}); it covers {_covered()}")
        if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
            raise ValueError(f"bound propagation covers zero-padded convolutions, not "
                             f"padding_mode={module.padding_mode!r} (the module {node.target!r})")
        operand = _operand(node, node.args[0], index)
        return (operand,), lambda centres: rule_for(module, centres[0].shape[1:])
    target = _method_or_function(node)
    if target in _RELU:
        return (_operand(node, node.args[0], index),), lambda centres: ReLURule()
    if target in _SUMS and _is_tensor_pair(node, index):
        signs = (1.0, _SUMS[target] * node.kwargs.get("alpha", 1))
        return tuple(_operand(node, argument, index) for argument in node.args[:2]), (
            lambda centres: SumRule(signs))
    if target in _SUMS or target in _PRODUCTS or target in _QUOTIENTS or target is operator.neg:
        return _scaling(node, target, index, constants)
    if target in (torch.cat, torch.concat):
        tensors = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        operands = tuple(_operand(node, argument, index) for argument in tensors)

        def concatenation(centres: list[torch.Tensor]) -> Rule:
            axis = dim % centres[0].dim()
            if axis == 0:
                raise ValueError(f"bound propagation: {_describe(node)} concatenates along the "
                                 f"batch dimension")
            return ConcatRule(axis, [centre.shape[axis] for centre in centres])
        return operands, concatenation
    if target in _RESHAPES:
        operand = _operand(node, node.args[0], index)

        def reshape(centres: list[torch.Tensor]) -> Rule:
            arguments = fx.node.map_arg(node.args[1:], lambda argument: _evaluate(
                argument, centres[0], node, index, constants, shapes))
            function = getattr(torch.Tensor, target) if isinstance(target, str) else target
            out = function(centres[0], *arguments, **node.kwargs)
            if out.shape[0] != centres[0].shape[0]:
                raise ValueError(f"bound propagation: {_describe(node)} changes the batch "
                                 f"dimension")
            return ReshapeRule(centres[0].shape[1:], out.shape[1:])
        return (operand,), reshape
    if target in _POOLS:
        arguments = [constants.get(argument, argument) for argument in node.args[1:]]
        if any(isinstance(argument, fx.Node) for argument in arguments):
            raise ValueError(f"bound propagation: {_describe(node)} needs constant arguments")
        module = _POOLS[target](*arguments, **node.kwargs)
        return ((_operand(node, node.args[0], index),),
                lambda centres: rule_for(module, centres[0].shape[1:]))
    raise ValueError(f"bound propagation has no rule for {_describe(node)}; it covers "
                     f"{_covered()}")


def _covered() -> str:
    return ("Linear, Conv2d, BatchNorm, Normalize, ReLU, average, adaptive average and max "
            "pooling, flatten and reshape, sums of two branches, concatenation and scalings by "
            "constants")


def _is_tensor_pair(node: fx.Node, index: dict[fx.Node, int]) -> bool:
    return len(node.args) >= 2 and all(
        isinstance(argument, fx.Node) and argument in index for argument in node.args[:2])


def _evaluate(argument: fx.Node, centre: torch.Tensor, node: fx.Node,
              index: dict[fx.Node, int], constants: dict[fx.Node, Any],
              shapes: set[fx.Node]) -> Any:
    """The value of a shape computation (``x.size(0)``, ...) in the trace: its tensor operand
    (``node``'s own, under any of its names) taken as ``centre``."""
    if argument in constants:
        return constants[argument]
    if argument not in shapes:
        if index.get(argument, -1) == index[node.args[0]]:
            return centre
        raise ValueError(f"bound propagation: {_describe(node)} takes its shape from another "
                         f"tensor than its operand")
    values = fx.node.map_arg((argument.args, argument.kwargs), lambda operand: _evaluate(
        operand, centre, node, index, constants, shapes))
    args, kwargs = values
    if argument.op == "call_method":
        return getattr(args[0], argument.target)(*args[1:], **kwargs)
    return argument.target(*args, **kwargs)


def _scaling(node: fx.Node, target: Any, index: dict[fx.Node, int],
             constants: dict[fx.Node, Any],
             ) -> tuple[tuple[int, ...], Callable[[list[torch.Tensor]], Rule]]:
    """A scaling or shift of one traced tensor by a constant: ``z·c``, ``c·z``, ``z/c``,
    ``z ± c``, ``c − z``, ``−z``."""
    arguments = list(node.args)
    positions = [position for position, argument in enumerate(arguments)
                 if isinstance(argument, fx.Node) and argument in index]
    if len(positions) != 1 or node.kwargs:
        raise ValueError(f"bound propagation has no rule for {_describe(node)} on these "
                         f"operands (a product or quotient of two computed tensors)")
    position = positions[0]
    operand = index[arguments[position]]
    others = [constants.get(argument, argument) for argument in arguments]
    if any(isinstance(other, fx.Node) for spot, other in enumerate(others) if spot != position):
        raise ValueError(f"bound propagation: {_describe(node)} needs a constant operand")
    value = others[1 - position] if target is not operator.neg else None

    def scaling(centres: list[torch.Tensor]) -> Rule:
        shape = centres[0].shape[1:]
        constant = None if value is None else _on_one_input(value, shape, node, centres[0])
        one = torch.ones((), dtype=centres[0].dtype, device=centres[0].device)
        zero = torch.zeros_like(one)
        if target is operator.neg:
            return ElementwiseRule(-one, zero)
        if target in _PRODUCTS:
            return ElementwiseRule(constant, zero)
        if target in _QUOTIENTS:
            if position == 0:
                return ElementwiseRule(1 / constant, zero)
            raise ValueError(f"bound propagation: {_describe(node)} divides by a computed tensor")
        sign = _SUMS[target]
        if position == 0:
            return ElementwiseRule(one, sign * constant)
        return ElementwiseRule(sign * one, constant)
    return (operand,), scaling


def _on_one_input(value: Any, shape: torch.Size, node: fx.Node, centre: torch.Tensor
                  ) -> torch.Tensor:
    """A constant operand as a tensor that broadcasts onto one input of ``shape`` (a leading
    dimension of size 1 dropped): a constant for every input of the batch alike."""
    constant = torch.as_tensor(value, dtype=centre.dtype, device=centre.device)
    if constant.dim() == len(shape) + 1:
        if constant.shape[0] != 1:
            raise ValueError(f"bound propagation: {_describe(node)} has a constant that varies "
                             f"along the batch dimension")
        constant = constant[0]
    try:
        torch.broadcast_shapes(constant.shape, shape)
    except RuntimeError:
        raise ValueError(f"bound propagation: {_describe(node)} has a constant of shape "
                         f"{tuple(constant.shape)} for inputs of {tuple(shape)}") from None
    if torch.broadcast_shapes(constant.shape, shape) != shape:
        raise ValueError(f"bound propagation: {_describe(node)} broadcasts its input to a "
                         f"larger shape")
    return constant
