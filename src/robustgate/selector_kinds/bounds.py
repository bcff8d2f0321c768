"""The bound selector (``selector: bounds``): the branch answers where ``bound_method`` (IBP, CROWN
or both) certifies it on ``B(x', κ·eps)`` around the input ``x'`` it sees; the branch needs bound
settings.

Counted from the branch's bound certificates (``Selection.bounds``): stable where IBP certifies
``(κ+1)·eps`` (interval bounds are monotone under inclusion). Its knob ``κ`` is configured, or
chosen on validation data for an operating point (certificates kept in
``certificates/validation``). The composition is exported as one program
(``exported/<composition>.pt2``, by any bound method: ``BoundSelector.certified``), its answers
compared with the Python object's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from robustgate.compose import ComposedClassifier
from robustgate.config import CompositionSettings, SearchSettings, TrainSpec
from robustgate.evaluate import BoundCertificates, Records, Selection
from robustgate.evaluate.certified import bound_certificates_or_resume
from robustgate.evaluate.operating_points import SelectionAt, choose_kappa, operating_curve
from robustgate.evaluate.results import CertifiedCompositionResult, OperatingPoint
from robustgate.io import file_name
from robustgate.models.modes import model_device, predict_logits
from robustgate.registry import CERTIFICATE_METHODS
from robustgate.select import BoundSelector
from robustgate.selector_kinds.base import SelectorKind
from robustgate.selector_kinds.run import CompositionRun, certified_core_part

# inputs per call of an exported CROWN selector in the export check: its coefficients, two rows
# per unit of a tightened layer over the widest activation, are about 10 MB per MNIST image for
# the StridedCNN 32/64/200 (200 units × 2 × 6,272 floats)
CROWN_EXPORT_BATCH = 16


def bound_selection_at(branch: dict[str, BoundCertificates], method: str) -> SelectionAt:
    """The bound selector deployed with ``method``, its stability read from the branch's IBP
    certificates (``Selection.bounds``)."""
    interval = branch["ibp"].records()
    return lambda deployed, eps, kappa: Selection.bounds(
        deployed, interval, eps, kappa,
        with_interval_bounds=CERTIFICATE_METHODS[method].monotone)


class BoundsKind(SelectorKind):
    name = "bounds"
    certified = True
    takes_kappa = True
    chooses_operating_point = True
    options = ("bound_method",)
    result_type = CertifiedCompositionResult

    def label(self, composition: CompositionSettings) -> str | None:
        return f"bounds: {composition.bound_method}"

    def check_branch(self, spec: TrainSpec) -> str | None:
        if spec.bounds is None:
            return "the bounds selector certifies its branches: give them bounds settings"
        return None

    def selection_radii(self, eps: float, kappa: float) -> set[float]:
        """What :meth:`Selection.bounds` reads at ``κ·eps``: the selection ``κ·eps`` and its
        stability ``(κ+1)·eps``."""
        if not kappa >= 1:
            raise ValueError(f"every kappa must be >= 1, got {kappa}")
        return {kappa * eps, (kappa + 1) * eps}

    def bound_methods(self, composition: CompositionSettings) -> set[str]:
        return {composition.bound_method}

    def bound_radii(self, composition: CompositionSettings, eps: float, split: str
                    ) -> set[float]:
        if split != "test" and composition.operating_point is None:
            return set()
        return set().union(*(self.selection_radii(eps, kappa) for kappa in composition.kappas))

    def _operating_point(self, run: CompositionRun, composition: CompositionSettings
                         ) -> OperatingPoint:
        """``κ`` chosen on the calibration points (``evaluate.operating_points`` on certified
        records): the branch and a core with bound settings certified there (resumable files
        in ``certificates/validation``), a core without them by its answers."""
        if run.validation is None:
            raise ValueError(f"composition {composition.label!r}: an operating point is chosen "
                             "on validation data: set data.validation_size")
        point = composition.operating_point
        assert point is not None
        config = run.config
        x, y = run.calibration()
        directory = run.out / "certificates" / "validation"
        name, core = composition.branches[0], composition.core
        run.say(f"[{composition.label}] choosing kappa on {len(y)} validation points")
        branch = run.shared(
            bound_certificates_or_resume, directory, name, run.models[name],
            config.models[name].bounds, ["ibp", *({composition.bound_method} - {"ibp"})], x, y,
            run.threat, run.bound_radii(name, "validation"))
        core_bounds = config.models[core].bounds
        core_certificates = None if core_bounds is None else run.shared(
            bound_certificates_or_resume, directory, core, run.models[core], core_bounds,
            run.bound_methods(core), x, y, run.threat, run.bound_radii(core, "validation"))
        answers = Records(y.numpy(), predict_logits(run.models[core], x).argmax(1).cpu().numpy(),
                          {})
        return choose_kappa(branch[composition.bound_method].records(),
                            certified_core_part(core_certificates, answers, len(y), run.eps),
                            run.eps, point.kappas, point.max_accuracy_drop,
                            bound_selection_at(branch, composition.bound_method))

    def evaluate(self, run: CompositionRun, composition: CompositionSettings
                 ) -> CertifiedCompositionResult:
        """Counted from the certificates, the core counting only where it is certified itself
        (by any of its methods); the composition is exported as one program and its answers
        compared with the Python object's on the whole test set."""
        point = (None if composition.operating_point is None
                 else self._operating_point(run, composition))
        eps = run.eps
        kappa = composition.kappa if point is None else point.kappa
        branch = run.bound_certificates[composition.branches[0]]
        deployed = branch[composition.bound_method].records()
        selection_at = bound_selection_at(branch, composition.bound_method)
        core_part = certified_core_part(run.bound_certificates.get(composition.core),
                                        run.records[composition.core], len(deployed), eps)
        result = run.certified_count(composition, deployed, core_part,
                                     selection_at(deployed, eps, kappa), kappa)
        result.extras.update({"bound_method": composition.bound_method,
                              "guarantee": "deterministic (bound propagation)"})
        if point is not None:
            point.test_curve = operating_curve(deployed, core_part, eps, composition.kappas,
                                               selection_at)
            result.operating_point = point
        run.say(f"[{composition.label}] certified {100 * result.certified_accuracy:.1f}% of "
                f"{len(deployed)}" + ("" if point is None else f" at kappa {kappa:g}"))
        result.extras["export"] = _export_check(run, composition, kappa)
        return result

    def search_branch(self, run: CompositionRun, search: SearchSettings, model: nn.Module,
                      spec: TrainSpec, directory: Path, split: str, x: torch.Tensor,
                      y: torch.Tensor) -> tuple[Records, SelectionAt]:
        radii = sorted({run.eps}.union(*(self.selection_radii(run.eps, kappa)
                                         for kappa in search.kappas)))
        methods = ["ibp", *({search.bound_method} - {"ibp"})]
        certificates = run.shared(bound_certificates_or_resume, directory / "certificates", split,
                                  model, spec.bounds, methods, x, y, run.threat, radii)
        return (certificates[search.bound_method].records(),
                bound_selection_at(certificates, search.bound_method))

    def report_note(self, label: str, result: CertifiedCompositionResult) -> str | None:
        export = result.extras.get("export")
        exported = "" if export is None else (
            f" Exported as one program ({export['path']}): it answers like the Python "
            f"object on {export['agreeing']} of {export['inputs']} test inputs.")
        return (f"{label}: the selector certifies the branch by {result.extras['bound_method']} on "
                f"B(x', {result.kappa:g}·eps) around the input it sees; a selection counts "
                f"as stable where IBP certifies B(x, {result.kappa + 1:g}·eps) (interval "
                f"bounds are monotone under inclusion); deterministic.{exported}")


def _export_check(run: CompositionRun, composition: CompositionSettings, kappa: float
                  ) -> dict[str, Any]:
    """Export the composition deployed at ``κ = kappa`` and compare the exported program's
    labels and routes with the Python object's on every test input (by a CROWN method in
    batches of ``CROWN_EXPORT_BATCH``: its exported form bounds every unit of the whole batch
    at once)."""
    x = run.test[0]
    name = composition.branches[0]
    branch, method = run.models[name], composition.bound_method
    deployed = ComposedClassifier(branch, BoundSelector(branch, run.threat, method, kappa),
                                  run.models[composition.core])
    path = deployed.export(run.out / "exported" / f"{file_name(composition.label)}.pt2", x[:2])
    program = torch.export.load(path).module()
    size = 500 if method == "ibp" else CROWN_EXPORT_BATCH
    agree, total = 0, 0
    for start in range(0, len(x), size):
        batch = x[start : start + size]
        labels, routes = deployed.predict(batch)
        exported_labels, exported_routes = program(batch.to(model_device(branch)))
        agree += int(((exported_labels.cpu() == labels) & (exported_routes.cpu() == routes))
                     .sum())
        total += len(batch)
    return {"path": str(path.relative_to(run.out)), "inputs": total, "agreeing": agree,
            "identical": agree == total}


BOUNDS = BoundsKind()
