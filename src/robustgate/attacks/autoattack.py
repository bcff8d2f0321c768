"""APGD-CE, APGD-T, FAB-T, Square and the AutoAttack ensemble from the ``pyautoattack`` package
(the AutoAttack authors' code), behind robustgate's attack signature.

The target given to an attack is the label to move away from; robustgate passes the model's own
prediction, so a success is any change of prediction (DESIGN.md section 1).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from robustgate.inputs import check_outputs
from robustgate.models.modes import as_model_dtype
from robustgate.threat import ThreatModel

PYAUTOATTACK_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
TWO_CLASS_ATTACKS = ("apgd-ce", "fab", "square")
THREE_CLASS_ATTACKS = ("apgd-ce", "fab-t", "square")
# the fewest classes an attack works on: the DLR loss reads the third-largest logit, its targeted
# form the fourth-largest, and a targeted attack needs a class other than the runner-up
MIN_CLASSES = {"apgd-dlr": 3, "apgd-t": 4, "fab-t": 3}
NORMS = {"linf": "Linf", "l2": "L2"}
# pyautoattack's L2 Square tiles an image by fifths of its height: it cannot run on lower images
SQUARE_L2_MIN_HEIGHT = 5


class AutoAttackAdapter:
    """Runs ``pyautoattack`` attacks one after the other on the samples still unbroken.

    ``attacks=None`` is the ``standard`` AutoAttack ensemble (APGD-CE, APGD-T, FAB-T, Square);
    APGD-T's targeted DLR loss needs at least four classes, so on three-class models the ensemble
    is APGD-CE, FAB-T and Square, and on two-class models APGD-CE, FAB and Square.
    ``iterations`` and ``restarts`` set APGD's budget, and ``iterations`` Square's queries, for a
    custom list and the ensembles of fewer classes (the standard version keeps the authors'
    settings). Under the L2 norm, inputs lower than 5 pixels (non-image inputs are viewed as
    ``1×1×features``) run without Square, whose L2 form cannot tile them.
    """

    def __init__(
        self,
        attacks: Sequence[str] | None = None,
        iterations: int = 100,
        restarts: int = 1,
        seed: int = 0,
    ) -> None:
        if attacks is not None:
            unknown = sorted(set(attacks) - set(PYAUTOATTACK_ATTACKS))
            if unknown or not attacks:
                raise ValueError(
                    f"unknown pyautoattack attacks {unknown or list(attacks)}; choose from "
                    f"{PYAUTOATTACK_ATTACKS}"
                )
        if iterations < 1 or restarts < 1:
            raise ValueError(
                f"need iterations >= 1 and restarts >= 1, got {iterations}, {restarts}"
            )
        self.attacks = None if attacks is None else tuple(attacks)
        self.iterations = iterations
        self.restarts = restarts
        self.seed = seed

    def __repr__(self) -> str:
        name = "standard" if self.attacks is None else "+".join(self.attacks)
        return f"AutoAttackAdapter({name}, iterations={self.iterations}, restarts={self.restarts})"

    def check_classes(self, num_classes: int) -> None:
        """Refuse, before anything runs, a list of attacks that cannot attack a model of
        ``num_classes`` classes (the standard ensemble adapts to two and three classes)."""
        for name in self.attacks or ():
            if num_classes < MIN_CLASSES.get(name, 2):
                raise ValueError(
                    f"{name} needs at least {MIN_CLASSES[name]} classes (the DLR loss reads "
                    "the third-largest logit, its targeted form the fourth-largest, a targeted "
                    f"attack a class other than the runner-up); the model has {num_classes}: "
                    "use apgd-ce or autoattack (which runs APGD-CE, FAB-T and Square on three "
                    "classes, APGD-CE, FAB and Square on two)")

    def __call__(
        self, model: nn.Module, x: torch.Tensor, target: torch.Tensor, threat: ThreatModel
    ) -> torch.Tensor:
        from pyautoattack import AutoAttack

        x = as_model_dtype(x, model)
        if threat.eps == 0 or len(x) == 0:
            return x.detach().clone()
        original, low, width = x, threat.low, threat.high - threat.low
        if x.dim() < 4 or (low, width) != (0.0, 1.0):
            # pyautoattack attacks images in [0, 1]: its view of the inputs, the ball rescaled
            model = _UnitView(model, x.shape[1:], low, width)
            x = (x - low) / width
            if x.dim() < 4:
                x = x.reshape(len(x), 1, 1, -1)
        with torch.no_grad():
            probe = model(x[:1])
        check_outputs(probe, "the attacked model")
        num_classes = int(probe.shape[1])
        self.check_classes(num_classes)
        attacks = self.attacks
        if attacks is None and num_classes < 4:
            attacks = TWO_CLASS_ATTACKS if num_classes < 3 else THREE_CLASS_ATTACKS
        common = {"eps": threat.eps / width, "norm": NORMS[threat.norm], "seed": self.seed,
                  "device": x.device}
        if attacks is None:
            adversary = AutoAttack(model, version="standard", **common)
        else:
            adversary = AutoAttack(model, version="custom", attacks=list(attacks), **common)
            adversary.apgd.n_iter = adversary.apgd_targeted.n_iter = self.iterations
            adversary.apgd.n_restarts = self.restarts
            adversary.square.n_queries = self.iterations
        targets = min(9, num_classes - 1)
        adversary.apgd_targeted.n_target_classes = targets
        adversary.fab.n_target_classes = targets
        adversary.verbose = False
        if threat.norm == "l2" and x.shape[2] < SQUARE_L2_MIN_HEIGHT:
            adversary.attacks_to_run = [name for name in adversary.attacks_to_run
                                        if name != "square"]
            if not adversary.attacks_to_run:
                raise ValueError(f"square cannot attack L2 inputs lower than "
                                 f"{SQUARE_L2_MIN_HEIGHT} pixels (these are {x.shape[2]} high): "
                                 "add apgd-ce or use autoattack")
        x_adv, _ = adversary.run_standard_evaluation(
            x.detach(), target.detach(), batch_size=len(x)
        )
        if isinstance(model, _UnitView):  # back to the inputs' own space
            x_adv = model.inputs(x_adv)
        return threat.project(x_adv, original)


class _UnitView(nn.Module):
    """``model`` applied to ``pyautoattack``'s view of its inputs: images in ``[0, 1]``
    (non-image inputs viewed as ``1×1×features``, a domain ``[low, low + width]`` rescaled)."""

    def __init__(self, model: nn.Module, input_shape: torch.Size, low: float,
                 width: float) -> None:
        super().__init__()
        self.model = model
        self.input_shape = input_shape
        self.low, self.width = low, width

    def inputs(self, view: torch.Tensor) -> torch.Tensor:
        """The model's inputs a view stands for."""
        return (self.low + self.width * view).reshape(len(view), *self.input_shape)

    def forward(self, view: torch.Tensor) -> torch.Tensor:
        return self.model(self.inputs(view))
