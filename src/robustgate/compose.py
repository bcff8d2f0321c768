"""The composed classifier at inference time: branches with selectors, then an accurate core.

``predict(x)`` walks the chain ``(branch_1, selector_1) → … → core``: each input is answered by
the first branch whose selector selects it, or by the core. It returns the labels and the route
(the index of the stage that answered; ``len(stages)`` means the core). A selector whose decision
is a certificate for a class (``select_and_answer``: the smoothing selector, the bound selector)
answers with that class; a bound selector certifies its own model, which must be its branch.

With bound selectors only (IBP or a CROWN method), the composition is a plain forward
computation (:class:`ComposedProgram`) that ``ComposedClassifier.export`` writes as one
``torch.export`` artefact: ``torch.export.load(path).module()(x)`` gives the labels and routes
without robustgate (with IBP the same; with a CROWN method from margins equal to float32
summation order, so a selection at a margin within about 1e-5 of 0 may differ).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from robustgate.inputs import check_inputs
from robustgate.io import atomic_write
from robustgate.models.modes import predict_logits
from robustgate.select import BoundSelector, Selector


class ComposedClassifier:
    """``(branch, selector, core)``: predict ``branch(x)`` where the selector selects, else
    ``core(x)``. Use :meth:`chain` for several branches."""

    def __init__(self, branch: nn.Module, selector: Selector, core: nn.Module) -> None:
        self.stages: list[tuple[nn.Module, Selector]] = [(branch, selector)]
        self.core = core
        self._check_class_counts()
        self._check_bound_selectors()

    @classmethod
    def chain(
        cls, stages: Sequence[tuple[nn.Module, Selector]], core: nn.Module
    ) -> ComposedClassifier:
        """``(branch_1, selector_1) → (branch_2, selector_2) → … → core``."""
        if not stages:
            raise ValueError("a chain needs at least one (branch, selector) stage")
        composed = cls(stages[0][0], stages[0][1], core)
        composed.stages = list(stages)
        composed._check_class_counts()
        composed._check_bound_selectors()
        return composed

    @property
    def core_route(self) -> int:
        """The route value of inputs answered by the core."""
        return len(self.stages)

    def named_models(self) -> list[tuple[str, nn.Module]]:
        """``("branch 0", model), …, ("core", model)``."""
        named = [(f"branch {i}", branch) for i, (branch, _) in enumerate(self.stages)]
        return [*named, ("core", self.core)]

    def _check_class_counts(self, probe: torch.Tensor | None = None) -> None:
        """Models declare ``num_classes``; those that do not are run on ``probe``, if given."""
        counts = {}
        for name, model in self.named_models():
            if hasattr(model, "num_classes"):
                counts[name] = int(model.num_classes)
            elif probe is not None:
                counts[name] = int(predict_logits(model, probe).shape[1])
        if len(set(counts.values())) > 1:
            raise ValueError(f"composed models disagree on the number of classes: {counts}")

    def _check_bound_selectors(self) -> None:
        """A bound selector answers with the class it certified for its model: its branch."""
        for route, (branch, selector) in enumerate(self.stages):
            if isinstance(selector, BoundSelector) and selector.model is not branch:
                raise ValueError(f"stage {route}: the bound selector certifies another model "
                                 "than its branch; build it on the branch")

    def predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Labels and routes (int64 tensors on the CPU) for the batch ``x``."""
        check_inputs(x, getattr(self.core, "input_shape", None))
        labels = torch.full((len(x),), -1, dtype=torch.int64)
        routes = torch.full((len(x),), self.core_route, dtype=torch.int64)
        if len(x):
            self._check_class_counts(probe=x[:1])
        pending = torch.arange(len(x))
        for route, (branch, selector) in enumerate(self.stages):
            if len(pending) == 0:
                break
            if hasattr(selector, "select_and_answer"):  # a certificate that names its class
                selected, answers = selector.select_and_answer(x[pending])
                selected = selected.cpu().bool()
                labels[pending[selected]] = answers.cpu()[selected]
            else:
                selected = selector.select(x[pending]).cpu().bool()
                chosen = pending[selected]
                if len(chosen):
                    labels[chosen] = predict_logits(branch, x[chosen]).argmax(dim=1).cpu()
            routes[pending[selected]] = route
            pending = pending[~selected]
        if len(pending):
            labels[pending] = predict_logits(self.core, x[pending]).argmax(dim=1).cpu()
        return labels, routes

    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """The labels of :meth:`predict` alone (what a robustness check compares)."""
        return self.predict(x)[0]

    def program(self) -> ComposedProgram:
        """The composition as one module, if every selector is a bound selector (IBP or a
        CROWN method: ``BoundSelector.certified``)."""
        for route, (_, selector) in enumerate(self.stages):
            if not isinstance(selector, BoundSelector):
                raise ValueError(f"stage {route} selects with {selector!r}: only bound selectors "
                                 "are a plain forward computation (attacks and Monte-Carlo "
                                 "certificates are not)")
        return ComposedProgram(self.stages, self.core)

    def export(self, path: str | Path, example: torch.Tensor) -> Path:
        """Write the composition (:meth:`program`) as a ``torch.export`` artefact, any batch
        size, traced on ``example`` (a batch of valid inputs); returns ``path``."""
        check_inputs(example, getattr(self.core, "input_shape", None))
        program = self.program().eval()
        batch = torch.export.Dim("batch", min=1)
        exported = torch.export.export(program, (example,), dynamic_shapes=({0: batch},))
        atomic_write(path, lambda temporary: torch.export.save(exported, temporary))
        return Path(path)


class ComposedProgram(nn.Module):
    """``forward(x) -> (labels, routes)``: every selector and the core evaluated on every input,
    the first selector that certifies answering with the class it certified (routes as in
    :meth:`ComposedClassifier.predict`)."""

    def __init__(self, stages: Sequence[tuple[nn.Module, BoundSelector]], core: nn.Module
                 ) -> None:
        super().__init__()
        self.selectors = nn.ModuleList([selector for _, selector in stages])  # hold the branches
        self.core = core

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        labels = self.core(x).argmax(dim=1)
        routes = torch.full_like(labels, len(self.selectors))
        for route in reversed(range(len(self.selectors))):
            selected, certified = self.selectors[route].certified(x)
            labels = torch.where(selected, certified, labels)
            routes = torch.where(selected, torch.full_like(routes, route), routes)
        return labels, routes
