"""Sampling error of a figure measured on a few hundred or thousand points, and paired
comparisons of two classifiers on the same inputs."""

from __future__ import annotations

import math
from typing import Literal

from scipy.stats import beta, binomtest


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95
                    ) -> tuple[float, float]:
    """The exact (Clopper–Pearson) two-sided interval of a proportion at ``confidence``."""
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes=}, "
                         f"{trials=}")
    interval = binomtest(successes, trials).proportion_ci(confidence, method="exact")
    return float(interval.low), float(interval.high)


def mcnemar_p_value(first_only: int, second_only: int,
                    alternative: Literal["two-sided", "greater"] = "two-sided") -> float:
    """The exact McNemar test on the discordant inputs of two paired indicators (``first_only``
    hold for the first only, ``second_only`` for the second only): the binomial test of
    ``first_only`` among them at 1/2, ``two-sided``, or ``greater`` (one-sided: the first holds
    more often). 1 where no input is discordant."""
    if first_only < 0 or second_only < 0:
        raise ValueError(f"counts of discordant inputs are >= 0, got {first_only}, "
                         f"{second_only}")
    discordant = first_only + second_only
    if discordant == 0:
        return 1.0
    return float(binomtest(first_only, discordant, 0.5, alternative=alternative).pvalue)


def paired_lower(lost_only_by_first: int, lost_only_by_second: int, level: float = 0.05) -> bool:
    """Whether a proportion is lower than another measured on the same inputs, beyond the
    sampling error: the exact McNemar test on the discordant inputs (those only the first loses,
    and those only the second loses), one-sided at ``level``."""
    return mcnemar_p_value(lost_only_by_first, lost_only_by_second, "greater") < level


def accuracy_drop_upper_bound(lost: int, gained: int, samples: int,
                              confidence: float = 0.95) -> float:
    """A one-sided upper confidence bound, at ``confidence``, on the accuracy drop of a
    classifier against a reference measured on the same ``samples`` inputs: the drop is
    ``p_lost − p_gained``, ``lost`` the inputs only the reference answers rightly, ``gained``
    those only the classifier does.

    By the union bound: the one-sided Clopper–Pearson upper bound on ``p_lost`` minus the lower
    bound on ``p_gained``, each at level ``(1 − confidence) / 2``; both hold together with
    probability at least ``confidence``, and then so does the bound."""
    if samples < 1 or lost < 0 or gained < 0 or lost + gained > samples:
        raise ValueError(f"need lost, gained >= 0 and lost + gained <= samples >= 1, got "
                         f"{lost=}, {gained=}, {samples=}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence is in (0, 1), got {confidence}")
    level = (1 - confidence) / 2
    upper = 1.0 if lost == samples else float(beta.ppf(1 - level, lost + 1, samples - lost))
    lower = 0.0 if gained == 0 else float(beta.ppf(level, gained, samples - gained + 1))
    return upper - lower


def confirmation_size(max_accuracy_drop: float, confidence: float = 0.95) -> int:
    """The fewest paired inputs on which :func:`accuracy_drop_upper_bound` can be at most
    ``max_accuracy_drop``: even a classifier that never differs from its reference (no
    discordant input; bound ``1 − ((1 − confidence)/2)^(1/n)``) needs this many to confirm the
    target."""
    if not 0 < max_accuracy_drop < 1:
        raise ValueError(f"an upper bound on a drop is confirmed only for a drop in (0, 1), got "
                         f"{max_accuracy_drop}")
    level = (1 - confidence) / 2
    size = max(1, math.ceil(math.log(level) / math.log1p(-max_accuracy_drop)))
    while accuracy_drop_upper_bound(0, 0, size, confidence) > max_accuracy_drop:
        size += 1
    while size > 1 and accuracy_drop_upper_bound(0, 0, size - 1, confidence) <= max_accuracy_drop:
        size -= 1
    return size
