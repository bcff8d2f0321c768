"""The selector kinds, one module each, registered in ``registry.SELECTOR_KINDS`` in this order
(the order a config's error lists them in): ``robustness``, ``smoothing``, ``bounds``,
``softmax_response``, ``entropy``, ``gate``, ``mixing``. A new kind is a module with a
:class:`SelectorKind` that registers itself, imported here (or by whoever defines it)."""

from robustgate.selector_kinds.base import SelectorKind
from robustgate.selector_kinds.bounds import BOUNDS  # noqa: I001 (registration order)
from robustgate.selector_kinds.confidence import ENTROPY, SOFTMAX_RESPONSE
from robustgate.selector_kinds.gate import GATE
from robustgate.selector_kinds.mixing import MIXING
from robustgate.selector_kinds.robustness import ROBUSTNESS, robustness_radii, sweep_radii
from robustgate.selector_kinds.run import CompositionRun
from robustgate.selector_kinds.smoothing import SMOOTHING

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
