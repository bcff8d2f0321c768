"""The layering of DESIGN.md section 4 as an executable contract: a module imports only from its
own layer or the layers below it (every import, also those inside functions)."""

from __future__ import annotations

import ast
from pathlib import Path

import robustgate

PACKAGE = Path(robustgate.__file__).parent

# lowest first; the modules of one layer may import one another
LAYERS = [
    {"threat", "inputs", "io", "device", "registry", "distributed", "table", "runner"},
    {"config"},
    {"run_directory"},
    {"data"},
    {"models"},
    {"attacks"},
    {"certify"},
    {"losses"},
    {"select"},
    {"compose"},
    {"evaluate"},
    {"train"},
    {"selector_kinds"},
    {"report"},
    {"pipeline"},
    {"study"},
    {"cli"},
]
RANK = {name: rank for rank, layer in enumerate(LAYERS) for name in layer}


def top_level(module: str) -> str | None:
    """``robustgate.<part>…`` → ``part``; ``None`` for modules outside the package."""
    parts = module.split(".")
    return parts[1] if parts[0] == "robustgate" and len(parts) > 1 else None


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return {part for module in found if (part := top_level(module)) is not None}


def modules() -> dict[str, Path]:
    """Every module of the package but its face (``__init__.py`` at the top), by layer name."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative == Path("__init__.py"):
            continue
        found[str(relative)] = path
    return found


def test_every_part_of_the_package_has_a_layer():
    parts = {Path(name).parts[0].removesuffix(".py") for name in modules()}
    assert parts == set(RANK), f"layers unknown to the contract: {sorted(parts ^ set(RANK))}"


def test_no_import_runs_against_the_layers():
    against = []
    for name, path in modules().items():
        own = Path(name).parts[0].removesuffix(".py")
        for imported in imports_of(path):
            if RANK[imported] > RANK[own]:
                against.append(f"{name} imports robustgate.{imported}")
    assert not against, "imports against the layering (DESIGN.md section 4):\n" + "\n".join(
        against)


def test_the_contract_catches_an_import_against_the_layers(tmp_path):
    """A module of a low layer importing a high one is found (the check can fail)."""
    module = tmp_path / "threat.py"
    module.write_text("def f():\n    from robustgate.pipeline import run_experiment\n")
    assert imports_of(module) == {"pipeline"}
    assert RANK["pipeline"] > RANK["threat"]
