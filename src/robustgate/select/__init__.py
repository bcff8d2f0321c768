"""Selectors decide, per input, whether the branch answers: ``select(x) -> mask``."""

from robustgate.select.robustness import RobustnessSelector, Selector

__all__ = ["RobustnessSelector", "Selector"]
