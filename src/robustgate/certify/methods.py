"""The certificate methods, registered in ``registry.CERTIFICATE_METHODS``: randomized smoothing
and the bound-propagation methods of ``certify.certify_bounds``. The config's ``bound_method`` and
``bounds.methods``, ``robustgate certify --method`` and the bound selector's count read them
here."""

from __future__ import annotations

from dataclasses import dataclass

from robustgate.registry import CERTIFICATE_METHODS


@dataclass(frozen=True)
class CertificateMethod:
    """``bound_propagation``: a deterministic certificate by ``certify_bounds`` (else randomized
    smoothing, ``Smooth.certify``); ``monotone``: it certifies wherever interval bounds do, and
    interval bounds are monotone under inclusion, so a bound selector deployed with it is
    counted stable where IBP certifies the larger ball (``Selection.bounds``)."""

    name: str
    description: str
    bound_propagation: bool = True
    monotone: bool = False


for _method in (
    CertificateMethod("smoothing", "randomized smoothing (L2, probabilistic)",
                      bound_propagation=False),
    CertificateMethod("ibp", "interval bounds", monotone=True),
    CertificateMethod("crown-ibp", "CROWN with interval intermediate bounds"),
    CertificateMethod("crown", "CROWN (backward linear bounds)"),
    CertificateMethod("ibp+crown", "the better of IBP's and CROWN's bound", monotone=True),
):
    CERTIFICATE_METHODS.register(_method.name, _method)


def bound_method_names() -> tuple[str, ...]:
    """The bound-propagation methods, in the order they registered."""
    return tuple(method.name for method in CERTIFICATE_METHODS.values()
                 if method.bound_propagation)
