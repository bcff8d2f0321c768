"""Threat models: a norm and a radius over a box-shaped input domain.

The perturbation set of an input ``x`` is the ball ``B(x, eps)`` in the chosen norm intersected
with the domain ``[low, high]`` per feature (DESIGN.md section 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

NORMS = ("linf", "l2")


@dataclass(frozen=True)
class ThreatModel:
    """The ball ``B(x, eps)`` in the ``linf`` or ``l2`` norm, intersected with ``[low, high]``."""

    norm: str
    eps: float
    low: float = 0.0
    high: float = 1.0

    def __post_init__(self) -> None:
        if self.norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {self.norm!r}")
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(
                f"domain must be finite with low < high, got low={self.low}, high={self.high}"
            )
        eps = float(self.eps)
        if not math.isfinite(eps) or eps < 0:
            raise ValueError(f"eps must be a finite number >= 0, got eps={self.eps}")
        if self.norm == "linf" and eps > self.high - self.low:
            raise ValueError(
                f"eps={self.eps} is larger than the domain [{self.low}, {self.high}]: "
                "every input could be moved anywhere; give eps in input units, e.g. 8/255"
            )
        object.__setattr__(self, "eps", eps)

    def scaled(self, factor: float) -> ThreatModel:
        """The same threat model with radius ``factor * eps`` (e.g. 2 for the sound selector)."""
        return ThreatModel(self.norm, self.eps * factor, self.low, self.high)

    def check_dimension(self, x: torch.Tensor) -> None:
        """Reject an ``l2`` radius larger than the diameter of the domain for inputs like ``x``."""
        if self.norm == "l2":
            diameter = (self.high - self.low) * math.sqrt(x[0].numel()) if len(x) else math.inf
            if self.eps > diameter:
                raise ValueError(
                    f"eps={self.eps} is larger than the l2 diameter {diameter:.4g} of the domain "
                    f"for inputs of shape {tuple(x.shape[1:])}"
                )

    def norm_of(self, delta: torch.Tensor) -> torch.Tensor:
        """Per-sample norm of a batch of perturbations."""
        flat = delta.flatten(1)
        if self.norm == "linf":
            return flat.abs().amax(dim=1)
        return flat.norm(p=2, dim=1)

    def clamp(self, x: torch.Tensor) -> torch.Tensor:
        """Clamp to the domain."""
        return x.clamp(self.low, self.high)

    def project(self, x_adv: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Closest point of ``B(x, eps)`` ∩ domain to ``x_adv`` (exact for ``linf``).

        For ``l2`` the ball projection is followed by the domain clamp; since ``x`` lies in the
        domain, the clamp only shrinks each coordinate of the perturbation, so the result stays
        in the ball.
        """
        delta = x_adv - x
        if self.norm == "linf":
            delta = delta.clamp(-self.eps, self.eps)
        else:
            norms = self.norm_of(delta).clamp_min(1e-12)
            factor = (self.eps / norms).clamp(max=1.0)
            delta = delta * factor.view(-1, *([1] * (delta.dim() - 1)))
        return self.clamp(x + delta)

    def ascent_step(self, gradient: torch.Tensor, step_size: float) -> torch.Tensor:
        """Steepest-ascent step of the given size in the threat norm: sign steps (``linf``),
        normalized gradient steps (``l2``)."""
        if self.norm == "linf":
            return step_size * gradient.sign()
        norms = gradient.flatten(1).norm(p=2, dim=1).clamp_min(1e-12)
        return step_size * gradient / norms.view(-1, *([1] * (gradient.dim() - 1)))

    def random_start(
        self, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """A point drawn uniformly from ``B(x, eps)``, clamped to the domain.

        Noise is drawn on the CPU from ``generator`` (reproducible on every device) and moved
        to the device of ``x``.
        """
        shape = x.shape
        if self.norm == "linf":
            delta = (torch.rand(shape, generator=generator) * 2 - 1) * self.eps
        else:
            direction = torch.randn(shape, generator=generator)
            direction = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-12).view(
                -1, *([1] * (len(shape) - 1))
            )
            dim = x[0].numel() if len(x) else 1
            radius = self.eps * torch.rand(shape[0], generator=generator) ** (1.0 / dim)
            delta = direction * radius.view(-1, *([1] * (len(shape) - 1)))
        return self.clamp(x + delta.to(device=x.device, dtype=x.dtype))
