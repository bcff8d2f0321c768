"""robustgate: robust only where accurate, robustness as the abstain signal, and composition."""

from robustgate.compose import ComposedClassifier
from robustgate.threat import ThreatModel

__all__ = ["ComposedClassifier", "ThreatModel"]
__version__ = "0.1.0"
