"""The selector kinds behind one registry: a kind is named in its own module only, and a kind
written here, registered here, runs through a whole experiment (config → run → report)."""

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import without_decision_regions
from test_pipeline import small_demo

import robustgate
from robustgate.config import CompositionSettings, parse_config
from robustgate.evaluate import Records, Selection
from robustgate.evaluate.results import CompositionResult
from robustgate.io import file_name
from robustgate.pipeline import run_experiment
from robustgate.registry import SELECTOR_KINDS, Registry
from robustgate.selector_kinds import CompositionRun, SelectorKind

PACKAGE = Path(robustgate.__file__).parent


class EverySelector:
    """Deployed: selects every input (the branch answers alone)."""

    def select(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(len(x), dtype=torch.bool)

    def score(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(x))


class BranchAloneKind(SelectorKind):
    """A kind whose selector selects everything: every reachable input is selected, so the
    selection is stable exactly where the branch is robust, and the composition is the branch."""

    name = "branch_alone"
    marker = "*"

    def evaluate(self, run: CompositionRun, composition: CompositionSettings
                 ) -> CompositionResult:
        branch = run.records[composition.branches[0]]
        robust = branch.robust_at(run.eps)
        everything = np.ones(len(branch), bool)
        selection = Selection(run.eps, everything, robust, robust, ~everything)
        return run.count(composition, [selection], [EverySelector()])


@pytest.fixture
def branch_alone():
    kind = BranchAloneKind().register()
    yield kind
    SELECTOR_KINDS.unregister(kind.name)


def test_a_kind_named_nowhere_but_here_runs_through_a_whole_experiment(branch_alone, tmp_path):
    config = small_demo(compositions=[{"branch": "era", "core": "standard"},
                                      {"branch": "era", "core": "standard",
                                       "selector": "branch_alone"}])
    label = "era→standard [branch_alone]"
    assert [c.label for c in config.compositions] == ["era→standard", label]
    result = run_experiment(config, without_decision_regions(tmp_path), device="cpu",
                            progress=False)
    branch = Records.read_csv(tmp_path / "records" / "test" / "era.csv")
    counted = result.test[label]
    assert counted.selection_rate == 1.0
    assert counted.natural_accuracy == result.test["era"].natural_accuracy
    assert counted.robust_accuracy == result.test["era"].robust_accuracy
    composed = Records.read_csv(tmp_path / "records" / "composed" / f"{file_name(label)}.csv")
    assert np.array_equal(composed.predictions, branch.predictions)
    assert label not in result.split("train")  # counted from test records only: no other split
    report = (tmp_path / "report.md").read_text()
    assert f"| {label} | branch_alone |" in report  # matched against the robustness selector
    assert json.loads((tmp_path / "metrics.json").read_text())["test"][label] == counted.to_json()


def test_an_unregistered_kind_is_refused_with_the_kinds_there_are():
    with pytest.raises(ValueError, match="unknown selector 'branch_alone'; choose from "
                                         r"\['robustness', 'smoothing', 'bounds'"):
        parse_config({"branch": "a", "core": "b", "selector": "branch_alone"},
                     CompositionSettings)


def test_a_name_registers_once():
    registry = Registry("thing")
    registry.register("a", 1)
    with pytest.raises(ValueError, match="thing 'a' is registered already"):
        registry.register("a", 2)
    assert registry["a"] == 1 and list(registry) == ["a"]


def _names_tested(path: Path, kinds: set[str]) -> list[str]:
    """Where ``path`` compares a selector (a ``selector`` or ``kind``) with a kind's name, or
    keys a table by kinds' names."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            constants = [element for operand in operands for element in (
                operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set))
                else [operand])]
            tested = any(word in ast.unparse(operand) for operand in operands
                         for word in ("selector", "kind"))
            names = {c.value for c in constants if isinstance(c, ast.Constant)} & kinds
            if tested and names:
                found.append(f"{path.name}:{node.lineno} {sorted(names)}")
        elif isinstance(node, ast.Dict) and len(node.keys) > 1 and all(
                isinstance(key, ast.Constant) and key.value in kinds for key in node.keys):
            found.append(f"{path.name}:{node.lineno} a table keyed by kinds")
    return found


# the confidence measures (``select.confidence``) are what the confidence kinds are named for
MEASURES = PACKAGE / "select" / "confidence.py"


def test_no_module_outside_the_kinds_tests_a_selector_name():
    kinds = set(SELECTOR_KINDS.names())
    found = [hit for path in sorted(PACKAGE.rglob("*.py"))
             if "selector_kinds" not in path.parts and path != MEASURES
             for hit in _names_tested(path, kinds)]
    assert not found, "selector names tested outside selector_kinds/:\n" + "\n".join(found)


def test_the_check_finds_a_name_tested_or_a_table_keyed_by_one(tmp_path):
    module = tmp_path / "module.py"
    module.write_text("def f(c):\n    return c.selector in ('bounds', 'x') or c.selector == 'gate'"
                      "\n\n\nMARKERS = {'robustness': 'o'}\n")
    assert sorted(_names_tested(module, {"robustness", "bounds", "gate"})) == [
        "module.py:2 ['bounds']", "module.py:2 ['gate']"]
    module.write_text("MARKERS = {'robustness': 'o', 'gate': '^'}\n")
    assert _names_tested(module, {"robustness", "gate"}) == ["module.py:1 a table keyed by kinds"]
