"""The noise objectives of DESIGN.md section 2, for smoothed classifiers. Each returns a
per-sample loss; ``sigma_train`` is the training noise (the smoothing noise ``σ`` of
certification is set apart, ``certify.Smooth``). Noisy inputs are not clamped to the domain: the
smoothed classifier is defined under Gaussian noise itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

PROBABILITY_CLIP = 1e-6


def _check_sigma_train(sigma_train: float) -> float:
    if not (isinstance(sigma_train, (int, float)) and math.isfinite(sigma_train)
            and sigma_train > 0):
        raise ValueError(f"sigma_train must be a finite number > 0, got {sigma_train!r}")
    return float(sigma_train)


class Gaussian:
    """Noise augmentation (Cohen et al.): ``CE(f(x + δ), y)``, ``δ ~ N(0, σ_train² I)``, a
    fresh draw every time a sample is seen."""

    adversarial = False

    def __init__(self, sigma_train: float) -> None:
        self.sigma_train = _check_sigma_train(sigma_train)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model(x + self.sigma_train * torch.randn_like(x)), y,
                               reduction="none")


def soft_smoothed_radius(logits: torch.Tensor, sigma: float, temperature: float) -> torch.Tensor:
    """The differentiable radius of MACER (Zhai et al.) on ``k`` noisy copies, ``logits`` of shape
    ``(batch, k, classes)``: ``σ/2 · (Φ⁻¹(p̃_(1)) − Φ⁻¹(p̃_(2)))``, ``p̃`` the mean softmax of the
    logits times ``temperature``, its top two probabilities clipped away from 0 and 1."""
    soft = F.softmax(temperature * logits, dim=2).mean(dim=1)
    top = soft.topk(2, dim=1).values.clamp(PROBABILITY_CLIP, 1 - PROBABILITY_CLIP)
    normal = torch.distributions.Normal(0.0, 1.0)
    return sigma / 2 * (normal.icdf(top[:, 0]) - normal.icdf(top[:, 1]))


class CRA:
    """Certified robust abstain: ``(1 − p̄_y) · R + β · CE(mean logits, y)`` on ``copies`` noisy
    copies of each input at ``σ_train``; ``p̄`` the mean softmax over the copies (not detached, so
    the weight also raises ``p̄_y``) and ``R`` the soft smoothed radius at ``temperature``. The
    first term shrinks the certified radius of likely-inaccurate samples; the second keeps
    accurate ones certified."""

    adversarial = False

    def __init__(self, sigma_train: float, beta: float = 0.75, copies: int = 16,
                 temperature: float = 4.0) -> None:
        self.sigma_train = _check_sigma_train(sigma_train)
        if not (beta >= 0 and temperature > 0 and isinstance(copies, int) and copies >= 2):
            raise ValueError(f"need beta >= 0, temperature > 0 and an integer copies >= 2, got "
                             f"{beta=}, {temperature=}, {copies=}")
        self.beta = beta
        self.copies = copies
        self.temperature = temperature

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        noisy = x.repeat_interleave(self.copies, dim=0)
        noisy = noisy + self.sigma_train * torch.randn_like(noisy)
        logits = model(noisy).view(len(x), self.copies, -1)
        mean_probability = F.softmax(logits, dim=2).mean(dim=1)
        inaccuracy = 1 - mean_probability.gather(1, y.view(-1, 1)).squeeze(1)
        radius = soft_smoothed_radius(logits, self.sigma_train, self.temperature)
        classification = F.cross_entropy(logits.mean(dim=1), y, reduction="none")
        return inaccuracy * radius + self.beta * classification
