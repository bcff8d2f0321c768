"""Certified metrics of the models of an experiment: a smoothed model's at every radius
summarized, and a bounded model's by each bound method beside its attacked robustness."""

from __future__ import annotations

from robustgate.certify import max_certifiable_radius
from robustgate.config import SmoothingSettings
from robustgate.evaluate import (
    BoundCertificates,
    Certificates,
    Records,
    certified_metrics,
    smoothing_metrics,
)
from robustgate.evaluate.results import (
    BoundFigures,
    BoundResult,
    SmoothedFigures,
    SmoothedModelResult,
)
from robustgate.threat import ThreatModel


def certified_model_metrics(certificates: Certificates, settings: SmoothingSettings,
                            threat: ThreatModel, radii: list[float], dimension: int,
                            sigma_train: float | None) -> SmoothedModelResult:
    """Certified metrics of one smoothed model at eps and at every radius of ``radii``."""
    records = certificates.records(threat, [threat.eps, *radii], dimension)
    largest = max_certifiable_radius(settings.sigma, settings.n, settings.alpha)
    by_radius = {f"{eps:g}": SmoothedFigures(**smoothing_metrics(records, threat, eps, dimension,
                                                                 largest))
                 for eps in sorted({threat.eps, *radii})}
    return SmoothedModelResult(
        **certified_metrics(records, threat.eps), sigma=settings.sigma, sigma_train=sigma_train,
        n=settings.n, alpha=settings.alpha, samples=len(certificates),
        max_certifiable_l2_radius=largest,
        mean_seconds_per_sample=float(certificates.seconds.mean()), by_radius=by_radius)


def bound_model_metrics(certificates: dict[str, BoundCertificates], empirical: Records,
                        radii: list[float]) -> BoundResult:
    """Certified metrics by each method at each radius, beside the empirical robust accuracy at
    the radii the model was attacked at (on the same test points)."""
    samples = len(next(iter(certificates.values())))
    attacked = Records(empirical.labels[:samples], empirical.predictions[:samples],
                       {r: flags[:samples] for r, flags in empirical.robust.items()})
    by_method = {}
    for method, certified in certificates.items():
        records = certified.records()
        by_method[method] = {
            f"{radius:g}": BoundFigures(
                **certified_metrics(records, radius), empirical_robust_accuracy=(
                    float((attacked.accurate & attacked.robust_at(radius)).mean())
                    if attacked.has_radius(radius) else None))
            for radius in radii}
    return BoundResult(by_method, samples, {method: float(c.seconds.mean())
                                            for method, c in certificates.items()})
