"""The selector kinds, one module each, registered in ``registry.SELECTOR_KINDS`` here, in the
order a config's error lists them. A new kind is a module with a :class:`SelectorKind`,
registered here (or by whoever defines it: ``kind.register()``)."""

from robustgate.selector_kinds.base import SelectorKind
from robustgate.selector_kinds.bounds import BOUNDS
from robustgate.selector_kinds.confidence import ENTROPY, SOFTMAX_RESPONSE
from robustgate.selector_kinds.gate import GATE
from robustgate.selector_kinds.mixing import MIXING
from robustgate.selector_kinds.robustness import ROBUSTNESS, robustness_radii, sweep_radii
from robustgate.selector_kinds.run import CompositionRun
from robustgate.selector_kinds.smoothing import SMOOTHING

for _kind in (ROBUSTNESS, SMOOTHING, BOUNDS, SOFTMAX_RESPONSE, ENTROPY, GATE, MIXING):
    _kind.register()

__all__ = [
    "BOUNDS",
    "ENTROPY",
    "GATE",
    "MIXING",
    "ROBUSTNESS",
    "SMOOTHING",
    "SOFTMAX_RESPONSE",
    "CompositionRun",
    "SelectorKind",
    "robustness_radii",
    "sweep_radii",
]
