"""Sampling error of a figure measured on a few hundred or thousand points."""

from __future__ import annotations

from scipy.stats import binomtest


def clopper_pearson(successes: int, trials: int, confidence: float = 0.95
                    ) -> tuple[float, float]:
    """The exact (Clopper–Pearson) two-sided interval of a proportion at ``confidence``."""
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials >= 1, got {successes=}, "
                         f"{trials=}")
    interval = binomtest(successes, trials).proportion_ci(confidence, method="exact")
    return float(interval.low), float(interval.high)


def paired_lower(lost_only_by_first: int, lost_only_by_second: int, level: float = 0.05) -> bool:
    """Whether a proportion is lower than another measured on the same inputs, beyond the
    sampling error: the exact McNemar test on the discordant inputs (those only the first loses,
    and those only the second loses), one-sided at ``level``."""
    discordant = lost_only_by_first + lost_only_by_second
    if discordant == 0:
        return False
    test = binomtest(lost_only_by_first, discordant, 0.5, alternative="greater")
    return bool(test.pvalue < level)
