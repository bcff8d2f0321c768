"""The smoothing selector: keep an input for a smoothed branch exactly where its certificate
reaches the selector's radius.

Deployed at ``κ·eps``, it runs CERTIFY at the input ``x'`` it sees and selects where the branch's
smoothed class is certified on the L2 ball of ``κ·r`` (``r`` the L2 radius covering the threat
ball). When that selection survives attack is the evaluation's to say
(``evaluate.composition.Selection.smoothing``): a fresh Monte-Carlo certificate at ``x'`` needs a
margin above ``(κ+1)·r`` at ``x``.
"""

from __future__ import annotations

import torch

from robustgate.certify import ABSTAIN, Smooth
from robustgate.select.robustness import logit_margin


class SmoothingSelector:
    """Selects ``x`` where ``smooth.certify(x, n0, n, alpha)`` certifies an L2 radius of at least
    ``radius`` (``κ`` times the L2 radius covering the threat ball)."""

    def __init__(self, smooth: Smooth, radius: float, n0: int = 100, n: int = 10_000,
                 alpha: float = 0.001, seed: int = 0) -> None:
        if not radius >= 0:
            raise ValueError(f"radius must be >= 0, got {radius}")
        self.smooth = smooth
        self.radius = float(radius)
        self.n0, self.n, self.alpha, self.seed = n0, n, alpha, seed

    def __repr__(self) -> str:
        return (f"SmoothingSelector(radius={self.radius:g}, sigma={self.smooth.sigma:g}, "
                f"n={self.n}, alpha={self.alpha:g})")

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """The base model's logit margin: not the decision (a certificate), but a quantity an
        attack on the selector could follow."""
        return logit_margin(self.smooth.base(x))

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean mask on the CPU: ``True`` where the branch answers."""
        predictions, radii, _ = self.smooth.certify(x, self.n0, self.n, self.alpha, self.seed)
        return (predictions != ABSTAIN) & (radii >= self.radius)
