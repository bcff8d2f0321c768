"""The learned gate (``selector: gate``): a small two-class network trained on a share of the
validation data to predict where the branch is robust and accurate (``train.train_gate``), its
threshold set on the rest. The gate is kept in ``models/gates/<branch>.safetensors``."""

from __future__ import annotations

import torch

from robustgate.models import build_model, load_checkpoint, save_checkpoint
from robustgate.select import GateSelector
from robustgate.selector_kinds.run import CompositionRun
from robustgate.selector_kinds.score import ScoreKind
from robustgate.train import train_gate


class GateKind(ScoreKind):
    name = "gate"
    marker = "^"

    def selector(self, run: CompositionRun, branch: str) -> GateSelector:
        """The branch's gate: read back, or trained on the first share of the calibration
        points (the branch's architecture and arguments unless the settings give others)."""
        settings = run.config.calibration.gate
        spec = run.config.models[branch].model
        architecture = settings.architecture or spec.architecture
        arguments = {**(settings.arguments if settings.arguments is not None
                        else spec.arguments), "num_classes": 2}
        path = run.out / "models" / "gates" / f"{branch}.safetensors"
        if path.exists():
            gate, _ = load_checkpoint(path, run.device)
            return GateSelector(gate)
        x, _ = run.calibration()
        count = run.gate_count()
        records = run.validation_records(branch)
        target = (records.accurate & records.robust_at(run.eps))[:count]
        run.say(f"[{branch}] training the gate on {count} validation points "
                f"({100 * target.mean():.1f}% robust and accurate)")
        torch.manual_seed(run.config.seed)
        gate = build_model(architecture, arguments).to(run.device)
        selector = train_gate(gate, x[:count], target,
                              settings.train.build(run.config.seed), progress=run.progress)
        save_checkpoint(path, gate, architecture, arguments, {"gate_for": branch})
        return selector


GATE = GateKind()
