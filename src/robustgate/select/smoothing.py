"""The smoothing selector: keep an input for a smoothed branch exactly where its certificate
reaches the selector's radius.

Deployed at ``κ·eps``, it runs CERTIFY at the input ``x'`` it sees and selects where the branch's
smoothed class is certified on the L2 ball of ``κ·r`` (``r`` the L2 radius covering the threat
ball). When that selection survives attack is the evaluation's to say
(``evaluate.sound_count.Selection.smoothing``): a fresh Monte-Carlo certificate at ``x'`` needs a
margin above ``(κ+1)·r`` at ``x``.

Its sequential form asks CERTIFY's question only, whether the radius reaches ``κ·r``, by
``Smooth.decide``: draws in rounds on ``certify.look_schedule`` up to the settings' ``n``,
stopping as soon as the test decides; its margin is ``certify.sequential_stable_radius``.
"""

from __future__ import annotations

import torch

from robustgate.certify import ABSTAIN, Smooth, look_schedule
from robustgate.config import SmoothingSettings
from robustgate.select.robustness import logit_margin


class SmoothingSelector:
    """Selects ``x`` where ``smooth.certify(x, n0, n, alpha)`` (``settings``: the smoothed
    model's own, those its certificates are counted from) certifies an L2 radius of at least
    ``radius`` (``κ`` times the L2 radius covering the threat ball), and answers with the class
    that certificate is for (``select_and_answer``), so that the composition's answer is the
    certified one.

    ``seed=None`` (the default for deployment) draws fresh noise on every call: a fixed seed
    makes the noise known to an adversary, and the per-input guarantee holds only for inputs
    chosen without that knowledge. A seed makes evaluations reproducible.

    ``sequential``: decide by ``smooth.decide`` on ``look_schedule(settings.n)`` instead of
    CERTIFY with all ``n`` draws (the module docstring)."""

    def __init__(self, smooth: Smooth, radius: float, settings: SmoothingSettings,
                 seed: int | None = None, sequential: bool = False) -> None:
        if not radius >= 0:
            raise ValueError(f"radius must be >= 0, got {radius}")
        if smooth.sigma != settings.sigma:
            raise ValueError(f"the model is smoothed at sigma {smooth.sigma:g}; its settings say "
                             f"sigma {settings.sigma:g}: build both from one settings object "
                             "(Smooth.from_settings)")
        self.smooth = smooth
        self.radius = float(radius)
        self.settings, self.seed, self.sequential = settings, seed, sequential

    def __repr__(self) -> str:
        return (f"SmoothingSelector(radius={self.radius:g}, sigma={self.settings.sigma:g}, "
                f"n={self.settings.n}, alpha={self.settings.alpha:g}"
                + (", sequential" if self.sequential else "") + ")")

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """The base model's logit margin: not the decision (a certificate), but a quantity an
        attack on the selector could follow."""
        return logit_margin(self.smooth.base(x))

    def select_and_answer(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean mask on the CPU (``True`` where the branch answers) and the certified class
        of every input (``ABSTAIN`` where none is)."""
        return self.decide(x)[:2]

    def decide(self, x: torch.Tensor, offset: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`select_and_answer`, and per input the model evaluations it spent (``x`` the
        inputs from index ``offset`` of a data set, which seeds their noise)."""
        seed = int(torch.randint(0, 2**62, ())) if self.seed is None else self.seed
        settings = self.settings
        if self.sequential:
            return self.smooth.decide(x, self.radius, settings.n0, look_schedule(settings.n),
                                      settings.alpha, seed, offset)
        predictions, radii, _ = self.smooth.certify(x, settings.n0, settings.n, settings.alpha,
                                                    seed, offset)
        return ((predictions != ABSTAIN) & (radii >= self.radius), predictions,
                torch.full((len(x),), settings.n0 + settings.n))

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """Boolean mask on the CPU: ``True`` where the branch answers."""
        return self.select_and_answer(x)[0]
