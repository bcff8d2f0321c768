"""robustgate: robust only where accurate, robustness as the abstain signal, and composition."""

# the selector kinds register their names before any config is read
import robustgate.selector_kinds  # noqa: F401
from robustgate.compose import ComposedClassifier
from robustgate.threat import ThreatModel

__all__ = ["ComposedClassifier", "ThreatModel"]
__version__ = "0.1.0"
