"""Randomized smoothing (Cohen, Rosenfeld and Kolter, ICML 2019), DESIGN.md section 3.

The smoothed classifier of a base classifier ``f`` at noise level ``σ`` answers the class ``f``
most likely gives under Gaussian noise, ``g(x) = argmax_c P[f(x + δ) = c]``, ``δ ~ N(0, σ² I)``.
Where the top class has probability ``p_A > 1/2``, ``g`` is constant on the L2 ball of radius
``σ · Φ⁻¹(p_A)``. :class:`Smooth` holds the two algorithms of the paper side by side:

- ``predict`` (PREDICT): ``n`` draws; the top class unless a two-sided binomial test of its count
  against the runner-up's cannot reject equal odds at level ``α`` (then abstain, ``-1``).
  With probability at least ``1 − α`` the answer is ``g(x)`` or an abstention.
- ``certify`` (CERTIFY): ``n0`` draws select the top class ``ĉ_A``; ``n`` fresh draws estimate its
  probability by the one-sided Clopper–Pearson lower bound ``p_A`` at level ``1 − α``; abstain
  where ``p_A ≤ 1/2``, else certify the L2 radius ``σ · Φ⁻¹(p_A)``. With probability at least
  ``1 − α`` a certified class is ``g(x)`` and ``g`` is constant on that ball.

The base classifier sees ``x + δ`` unclamped (the guarantee is stated for Gaussian noise itself);
noise is drawn for many inputs per forward pass, at most ``batch_size`` noisy inputs at a time,
each input from its own generator seeded by the call's seed and its index: the same seed and
``batch_size`` on the same device give the same result, whichever inputs are certified together.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import beta as beta_distribution
from scipy.stats import binom, binomtest, norm
from torch import nn

from robustgate.config import SmoothingSettings
from robustgate.inputs import check_inputs, check_outputs
from robustgate.models.modes import as_model_dtype, eval_mode, model_device
from robustgate.runner import input_seed
from robustgate.threat import ThreatModel

ABSTAIN = -1


def clopper_pearson_lower(successes: np.ndarray | int, trials: int, alpha: float) -> np.ndarray:
    """The one-sided ``1 − α`` Clopper–Pearson lower bound of a binomial proportion:
    ``Beta(α; k, n − k + 1)`` quantile, 0 where ``k = 0``."""
    successes = np.asarray(successes, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bound = beta_distribution.ppf(alpha, successes, trials - successes + 1)
    return np.where(successes > 0, bound, 0.0)


def max_certifiable_radius(sigma: float, n: int, alpha: float) -> float:
    """The largest radius ``certify`` can give with ``n`` draws at level ``α``: every draw on the
    top class gives ``p_A = α^(1/n)``, so ``σ · Φ⁻¹(α^(1/n))``. Radii above it cannot be
    certified, however robust the model."""
    _check_settings(sigma, 1, n, alpha)
    return float(sigma * norm.ppf(alpha ** (1.0 / n)))


def covering_l2_radius(threat: ThreatModel, dimension: int) -> float:
    """The L2 radius whose ball covers the threat's ball: ``eps`` for L2, ``eps∞ · √d`` for Linf
    (``d`` features). Smoothing certifies L2 balls; a Linf threat is certified through this."""
    if dimension < 1:
        raise ValueError(f"dimension must be >= 1, got {dimension}")
    return threat.eps if threat.norm == "l2" else threat.eps * math.sqrt(dimension)


def stable_radius(sigma: float, radius: float, distance: float, n0: int, n: int, alpha: float,
                  failure: float | None = None) -> float:
    """The certified radius at ``x`` from which a smoothing selector deployed at ``radius``
    (``certify(x', n0, n, α)`` with radius ≥ ``radius``) selects every ``x'`` within L2
    ``distance`` of ``x``, each with probability at least ``1 − failure`` (``α`` by default), and
    the smoothed class there is the one certified at ``x``.

    ``Φ⁻¹(p(x))`` is ``1/σ``-Lipschitz for the exact top-class probability ``p`` (Salman et al.,
    2019), so ``p(x') ≥ q`` on the ball wherever ``σ·Φ⁻¹(p(x)) ≥ σ·Φ⁻¹(q) + distance``; a
    certificate at ``x`` bounds ``σ·Φ⁻¹(p(x))`` from below by its radius. ``q`` is the smallest
    probability at which the selector's ``n0`` selection draws pick the class by a majority and
    its ``n`` estimation draws clear ``Φ(radius/σ)`` with probability ``1 − failure`` together
    (a union bound). ``inf`` where no probability below 1 is enough."""
    _check_settings(sigma, n0, n, alpha)
    failure = alpha if failure is None else failure
    if not 0 < failure < 1:
        raise ValueError(f"failure must be in (0, 1), got {failure}")
    if not (radius >= 0 and distance >= 0):
        raise ValueError(f"radius and distance must be >= 0, got {radius=}, {distance=}")
    threshold = norm.cdf(radius / sigma)
    counts = np.arange(n + 1)
    clearing = counts[clopper_pearson_lower(counts, n, alpha) > threshold]
    if len(clearing) == 0:
        return math.inf
    needed = int(clearing[0])

    def misses(q: float) -> float:
        return float(binom.cdf(needed - 1, n, q) + binom.cdf(n0 // 2, n0, q))

    low, high = max(threshold, 0.5), 1.0
    if misses(np.nextafter(1.0, 0.0)) > failure:
        return math.inf
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if misses(middle) > failure else (low, middle)
    return float(sigma * norm.ppf(high) + distance)


def vote_radius(sigma: float, distance: float, votes: int, failure: float) -> float:
    """The certified radius at ``x`` from which a smoothed model deployed as a majority vote of
    ``votes`` noisy draws (``Smooth.forward``) answers the class certified at ``x`` at every
    ``x'`` within L2 ``distance``, each with probability at least ``1 − failure``.

    As for :func:`stable_radius`: ``σ·Φ⁻¹(p)`` is 1-Lipschitz, so ``p(x') ≥ q`` on the ball where
    the radius certified at ``x`` reaches ``σ·Φ⁻¹(q) + distance``; ``q`` is the smallest top-class
    probability at which more than half of the ``votes`` draws pick the class with probability
    ``1 − failure`` (a majority wins the vote whatever the other classes get; a tie counts as a
    miss). ``inf`` where no probability below 1 is enough."""
    _check_sigma(sigma)
    if not (isinstance(votes, int) and votes >= 1):
        raise ValueError(f"votes must be an integer >= 1, got {votes!r}")
    if not 0 < failure < 1:
        raise ValueError(f"failure must be in (0, 1), got {failure}")
    if not distance >= 0:
        raise ValueError(f"distance must be >= 0, got {distance}")

    def misses(q: float) -> float:
        return float(binom.cdf(votes // 2, votes, q))

    if misses(np.nextafter(1.0, 0.0)) > failure:
        return math.inf
    low, high = 0.5, 1.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if misses(middle) > failure else (low, middle)
    return float(sigma * norm.ppf(high) + distance)


def _check_sigma(sigma: float) -> None:
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")


def _check_settings(sigma: float, n0: int, n: int, alpha: float) -> None:
    _check_sigma(sigma)
    if not (isinstance(n, int) and isinstance(n0, int) and n0 >= 1 and n >= 1):
        raise ValueError(f"n0 and n must be integers >= 1, got n0={n0!r}, n={n!r}")
    if n0 > n:
        raise ValueError(f"n0={n0} selection draws exceed the n={n} estimation draws; "
                         "Cohen et al. use n0=100, n=100000")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


class Smooth(nn.Module):
    """The smoothed classifier of ``base`` at noise level ``sigma`` (input units, the ``[0, 1]``
    domain), over ``num_classes`` classes.

    As a module, ``forward(x)`` returns the vote counts of ``votes`` noisy draws per input (their
    argmax is the smoothed class, estimated), so a smoothed model composes like any other. Its
    noise is drawn afresh on every call (from PyTorch's global generator) unless ``seed`` fixes
    it: a fixed seed makes a deployed vote reproducible, and its noise known to an adversary.
    ``batch_size`` caps the noisy inputs per forward pass of ``base``.
    """

    def __init__(self, base: nn.Module, num_classes: int, sigma: float, batch_size: int = 1000,
                 votes: int = 1000, seed: int | None = None) -> None:
        super().__init__()
        _check_sigma(sigma)
        if batch_size < 1 or votes < 1 or num_classes < 2:
            raise ValueError(f"need batch_size >= 1, votes >= 1 and num_classes >= 2, got "
                             f"{batch_size}, {votes}, {num_classes}")
        declared = getattr(base, "num_classes", None)
        if declared is not None and int(declared) != num_classes:
            raise ValueError(f"num_classes={num_classes}, but the base model has {declared} "
                             "classes; give its own count")
        self.base = base
        self.num_classes = num_classes
        self.sigma = float(sigma)
        self.batch_size = batch_size
        self.votes = votes
        self.seed = seed
        self.input_shape = getattr(base, "input_shape", None)

    @classmethod
    def from_settings(cls, base: nn.Module, settings: SmoothingSettings) -> Smooth:
        """``base`` smoothed as ``settings`` say (σ, the draws of its vote, the noisy inputs per
        forward pass): the one way a configured smoothed model is built."""
        return cls(base, base.num_classes, settings.sigma, settings.batch_size, settings.votes)

    def __repr__(self) -> str:
        return f"Smooth(sigma={self.sigma:g}, base={type(self.base).__name__})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seed = int(torch.randint(0, 2**62, ())) if self.seed is None else self.seed
        return self.counts(x, self.votes, seed).to(torch.float32)

    def predict(self, x: torch.Tensor, n: int, alpha: float, seed: int = 0, offset: int = 0,
                ) -> torch.Tensor:
        """PREDICT: the smoothed class of every input, or ``ABSTAIN`` (−1) where the top two
        counts of ``n`` draws do not differ at level ``alpha`` (two-sided binomial test)."""
        _check_settings(self.sigma, 1, n, alpha)
        counts = self.counts(x, n, seed, offset).cpu()
        top = counts.topk(2, dim=1)
        predictions = top.indices[:, 0].clone()
        for i, (first, second) in enumerate(top.values.tolist()):
            if binomtest(first, first + second, 0.5).pvalue > alpha:
                predictions[i] = ABSTAIN
        return predictions

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, seed: int = 0,
                offset: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """CERTIFY: per input the class (``ABSTAIN`` where ``p_A ≤ 1/2``), the certified L2
        radius ``σ · Φ⁻¹(p_A)`` (0 where abstaining) and the lower bound ``p_A`` itself."""
        _check_settings(self.sigma, n0, n, alpha)
        generators = self._generators(x, seed, offset)
        selected = self._counts(x, n0, generators).argmax(dim=1).cpu()
        estimated = self._counts(x, n, generators).cpu()
        top_count = estimated.gather(1, selected.view(-1, 1)).squeeze(1).numpy()
        p_lower = clopper_pearson_lower(top_count, n, alpha)
        certified = p_lower > 0.5
        radii = np.where(certified, self.sigma * norm.ppf(np.clip(p_lower, 0.5, 1.0)), 0.0)
        predictions = torch.where(torch.from_numpy(certified), selected, ABSTAIN)
        return predictions, torch.from_numpy(radii), torch.from_numpy(p_lower)

    def counts(self, x: torch.Tensor, num: int, seed: int = 0, offset: int = 0) -> torch.Tensor:
        """How often ``base`` gives each class on ``num`` noisy copies of each input."""
        return self._counts(x, num, self._generators(x, seed, offset))

    def _generators(self, x: torch.Tensor, seed: int, offset: int) -> list[torch.Generator]:
        """One generator per input, seeded by ``seed`` and the input's index ``offset + i`` in its
        data set: the noise an input gets depends on neither its batch nor its neighbours."""
        check_inputs(x, self.input_shape)
        device = model_device(self.base)
        return [torch.Generator(device=device).manual_seed(input_seed(seed, offset + i))
                for i in range(len(x))]

    def _base_labels(self, batch: torch.Tensor) -> torch.Tensor:
        """The base model's classes on a noisy batch; its outputs must be finite logits of
        ``num_classes`` classes."""
        logits = self.base(batch)
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"the base model gives outputs of shape {tuple(logits.shape)}, "
                             f"Smooth was built for num_classes={self.num_classes}")
        check_outputs(logits, "the base model")
        return logits.argmax(dim=1)

    def _counts(self, x: torch.Tensor, num: int, generators: list[torch.Generator],
                ) -> torch.Tensor:
        x = as_model_dtype(x, self.base)
        device = model_device(self.base)
        counts = torch.zeros(len(x), self.num_classes, dtype=torch.int64, device=device)
        block = min(num, self.batch_size)  # an input's noise comes in blocks of this many draws
        per_pass = max(1, self.batch_size // block)
        with eval_mode(self.base), torch.no_grad():
            for start in range(0, len(x), per_pass):
                group = x[start : start + per_pass].to(device)
                remaining = num
                while remaining:
                    draws = min(remaining, block)
                    noise = torch.cat([
                        torch.randn((draws, *group.shape[1:]), generator=generator,
                                    device=device)
                        for generator in generators[start : start + len(group)]])
                    batch = group.repeat_interleave(draws, dim=0) + self.sigma * noise
                    votes = nn.functional.one_hot(self._base_labels(batch), self.num_classes)
                    counts[start : start + len(group)] += votes.view(
                        len(group), draws, self.num_classes).sum(dim=1)
                    remaining -= draws
        return counts
