"""``robustgate compose``: a composition from per-sample records (offline, counted in the sound
form) or from checkpoints (inference on a data split, with routes, and optionally the adaptive
attack and its sanity checks; under torchrun each rank computes its shard of the predictions and
of the adaptive attack's records, written by the resumable runner)."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robustgate.attacks import Attack, check_attack_applies
from robustgate.compose import ComposedClassifier
from robustgate.config import DEFAULT_KAPPAS
from robustgate.data.idx import file_digest
from robustgate.distributed import ALONE, Process, barrier
from robustgate.evaluate import (
    AdaptiveAttack,
    Records,
    Selection,
    evaluate_model,
    robustness_metrics,
)
from robustgate.evaluate.operating_points import choose_kappa
from robustgate.evaluate.records import same_labels
from robustgate.evaluate.sanity import sanity_checks
from robustgate.evaluate.sound_count import composition_metrics, route_counts
from robustgate.inputs import check_inputs
from robustgate.io import atomic_write_json, check_settings
from robustgate.models import load_checkpoint, predict_logits
from robustgate.registry import SELECTOR_KINDS
from robustgate.runner import run_per_sample
from robustgate.select import Cascade
from robustgate.table import INTEGER, Column, Schema, Table
from robustgate.threat import ThreatModel

PREDICTIONS = Schema("predictions", leading=(
    Column("label", INTEGER), Column("prediction", INTEGER), Column("route", INTEGER)))


def compose_from_records(
    branches: Sequence[str | Path], core: str | Path, eps: float, out: str | Path,
    kappa: float = 1.0, max_accuracy_drop: float | None = None,
    validation: tuple[str | Path, str | Path] | None = None,
    kappas: Sequence[float] = DEFAULT_KAPPAS,
) -> dict[str, Any]:
    """The chain ``branches → core`` with robustness selectors deployed at ``κ·eps``, counted in
    the sound form from the parts' records (branch records at ``κ·eps`` and ``(κ+1)·eps``).

    With ``max_accuracy_drop``, ``κ`` is chosen among ``kappas`` on the ``validation`` records
    ``(branch, core)`` of a single branch: the highest sound robust accuracy whose composed
    natural accuracy is at most that far below the core's (``evaluate.operating_points``).
    """
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    if not kappa >= 1:
        raise ValueError(f"kappa must be >= 1, got {kappa}")
    parts = [Records.read_csv(path) for path in branches]
    core_records = Records.read_csv(core)
    _check_radii(core, core_records, [eps], "the core at eps")
    summary: dict[str, Any] = {"branches": [str(path) for path in branches], "core": str(core),
                               "eps": eps}
    if max_accuracy_drop is not None:
        if validation is None or len(parts) != 1:
            raise ValueError("choosing kappa for an accuracy target needs one branch and its "
                             "validation records (--validation-branch, --validation-core)")
        branch_validation, core_validation = (Records.read_csv(path) for path in validation)
        _check_radii(validation[0], branch_validation,
                     sorted({r for k in kappas for r in (k * eps, (k + 1) * eps)}),
                     f"choosing among kappas {', '.join(f'{k:g}' for k in kappas)}")
        _check_radii(validation[1], core_validation, [eps], "the core at eps")
        point = choose_kappa(branch_validation, core_validation, eps, kappas, max_accuracy_drop)
        summary["operating_point"] = point.to_json()
        kappa = point.kappa
    for path, part in zip(branches, parts, strict=True):
        _check_radii(path, part, [kappa * eps, (kappa + 1) * eps],
                     f"a branch selected at kappa {kappa:g} (kappa·eps, and (kappa+1)·eps where "
                     "its selection is stable)")
    selections = [Selection.robustness(part, eps, kappa) for part in parts]
    metrics, composed, _ = composition_metrics(parts, core_records, selections)
    out = Path(out)
    composed.to_csv(out / "records.csv")
    routes = metrics.pop("routes")
    summary.update({"kappa": kappa, "selector_eps": kappa * eps, "metrics": metrics,
                    "routes": routes})
    atomic_write_json(out / "summary.json", summary)
    return summary


def _check_radii(path: str | Path, records: Records, radii: Sequence[float], role: str) -> None:
    """Refuse records that lack a radius the count reads, naming the file and what it holds."""
    missing = [radius for radius in radii if not records.has_radius(radius)]
    if missing:
        held = ", ".join(f"{radius:g}" for radius in sorted(records.robust)) or "none"
        raise ValueError(
            f"{path} holds robustness at eps {held}; {role} needs "
            f"{', '.join(f'{radius:g}' for radius in radii)}: evaluate it there (robustgate "
            f"evaluate ... --eps {' '.join(f'{radius:g}' for radius in radii)}) or compose at "
            "another eps or kappa")


def compose_from_checkpoints(
    branches: Sequence[str | Path], core: str | Path, x: torch.Tensor, y: torch.Tensor,
    threat: ThreatModel, attack: Attack, out: str | Path, selector: str = "robustness",
    threshold: float | None = None, coverage: float | None = None,
    calibration: torch.Tensor | None = None, adaptive: AdaptiveAttack | None = None,
    device: torch.device | str = "cpu", batch_size: int = 500, progress: bool = True,
    kappa: float = 1.0, sanity: int = 0, square_queries: int = 1000, trust_code: bool = False,
    form: str | None = None, process: Process = ALONE,
) -> dict[str, Any] | None:
    """Compose checkpoints and predict on ``(x, y)``: predictions with routes, route counts, and
    with ``adaptive`` the composition's robust accuracy under the adaptive attack and, on the
    first ``sanity`` inputs, the sanity checks of ``evaluate.sanity`` (Square with
    ``square_queries`` queries, growing eps). ``form``: the selector kind's form (the robustness
    selector's ``"cascade"``, its stages chosen on ``calibration``; the inputs each stage
    decided in the summary). The predictions and the adaptive attack's records are resumable
    tables (``compose.json`` keeps the settings they were made with); under torchrun
    (``process``) each rank computes its shard of them, and rank 0 alone runs the sanity checks
    and writes the summary, which the other ranks get as ``None``."""
    kind = SELECTOR_KINDS[selector]
    if not kind.chains and len(branches) > 1:
        raise ValueError(f"the {selector} selector composes one branch: give no chain with it")
    if form == "cascade" and process.world_size > 1:
        raise ValueError("--cascade chooses its stages by the time each takes on this machine, "
                         "which the ranks of a torchrun run would measure apart: run it in one "
                         "process")
    models = [load_checkpoint(path, device, trust_code)[0] for path in branches]
    core_model = load_checkpoint(core, device, trust_code)[0]
    check_attack_applies(attack, models[0].num_classes)
    for model in [*models, core_model]:  # a diverged model is refused before anything runs
        check_inputs(x, getattr(model, "input_shape", None))
        predict_logits(model, x)
    stages = [(model, kind.deploy(model, threat, attack, threshold, coverage, calibration,
                                  kappa, form)) for model in models]
    composed = ComposedClassifier.chain(stages, core_model)
    out = Path(out)
    summary: dict[str, Any] = {
        "branches": [str(path) for path in branches], "core": str(core),
        "selector": selector, "kappa": kappa, "samples": len(y)}
    # the tables are resumed only beside the settings they were made with: every input they
    # depend on, the data and the checkpoints by their bytes
    made_with = {**summary, "threat": repr(threat), "attack": repr(attack), "form": form,
                 "threshold": threshold, "coverage": coverage, "data": _digest(x, y),
                 "calibration": None if calibration is None else _digest(calibration),
                 "checkpoints": [file_digest(Path(path), "sha256")
                                 for path in [*branches, core]]}
    if (out / "predictions.csv").exists() and not (out / "compose.json").exists():
        raise ValueError(f"{out} holds predictions.csv without the settings it was made with "
                         "(compose.json): choose another --out or remove it")
    attacked_with = {**made_with, "adaptive": None if adaptive is None else repr(adaptive)}
    for name, settings, what in (("compose.json", made_with, "predictions"),
                                 ("adaptive.json", attacked_with, "adaptive records")):
        check_settings(out / name, settings, what)  # every rank refuses alike
    if process.is_main:
        atomic_write_json(out / "compose.json", made_with)
        if adaptive is not None:
            atomic_write_json(out / "adaptive.json", attacked_with)
    barrier(process)
    labels = y.cpu().numpy()

    def predict(indices: np.ndarray) -> Table:
        predicted, routes = composed.predict(x[torch.from_numpy(indices)])
        return Table(PREDICTIONS, indices, {"label": labels[indices],
                                            "prediction": predicted.cpu().numpy(),
                                            "route": routes.cpu().numpy()}, {})

    table = run_per_sample(PREDICTIONS, predict, len(y), batch_size, (), out / "predictions.csv",
                           same_labels(labels, "predictions"), progress, "compose", process.rank,
                           process.world_size)
    predicted, route = table.columns["prediction"], table.columns["route"]
    accurate = predicted == labels
    summary.update({
        "natural_accuracy": float(accurate.mean()) if len(y) else None,
        "selection_rate": float((route == 0).mean()) if len(y) else None,
        "routes": route_counts(accurate, route, len(models)),
    })
    checks = [getattr(selector, "attack", None) for _, selector in stages]
    if any(isinstance(check, Cascade) for check in checks):  # of the inputs this call decided
        summary["cascade"] = [{"stages": list(check.stages), "decided": dict(check.decided),
                               "inputs_decided_now": sum(check.decided.values())}
                              for check in checks]
    threshold = getattr(stages[0][1], "threshold", None)
    if threshold is not None:
        summary["threshold"] = threshold
    records = None if adaptive is None else evaluate_model(
        composed, x, y, threat, [threat.eps], adaptive, batch_size=batch_size, progress=progress,
        description="adaptive", path=out / "adaptive.csv", rank=process.rank,
        world_size=process.world_size)
    if not process.is_main:
        return None
    if records is not None:
        summary["adaptive"] = {"attack": repr(adaptive), **robustness_metrics(
            records.accurate, records.robust_at(threat.eps))}
        if sanity:
            summary["sanity"] = sanity_checks(composed, x[:sanity], y[:sanity], threat, adaptive,
                                              square_queries, batch_size=batch_size)
    atomic_write_json(out / "summary.json", summary)
    return summary


def _digest(*tensors: torch.Tensor) -> str:
    """The SHA-256 of the tensors' shapes, dtypes and bytes."""
    digest = hashlib.sha256()
    for tensor in tensors:
        values = tensor.detach().cpu().contiguous()
        digest.update(f"{tuple(values.shape)} {values.dtype}".encode())
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()
