"""The core imports in one direction: each module only from modules before it in LAYERS.

Imports under ``if TYPE_CHECKING:`` and inside functions count too: a cycle there is still
a cycle in what a reader must hold in mind. README.md's "How it works" states the same
order.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "flowcat_ft"

LAYERS = [
    "slabs",
    "frames",
    "rings",
    "waiting",
    "metrics",
    "cpu",
    "gcpolicy",
    "profiling",
    "processor",
    "dispatch",
    "pipeline",
    "stage",
    "call",
    "loops",
    "observers",
    "runtime",
    "aio",
]
"""The core modules, lowest first."""

ABOVE_THE_CORE = {"__init__", "cli"}


def core_imports(module: str) -> set[str]:
    """The flowcat_ft modules ``module`` imports, wherever the import statement is."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):  # relative ones count as from the package
            module = node.module or ""
            names = [f"flowcat_ft.{module}".rstrip(".") if node.level else module]
        else:
            continue
        for name in names:
            if name == "flowcat_ft" or name.startswith("flowcat_ft."):
                found.add(name.removeprefix("flowcat_ft").removeprefix(".") or "__init__")
    return found


def test_every_top_level_module_is_placed():
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    assert modules == set(LAYERS) | ABOVE_THE_CORE


@pytest.mark.parametrize("module", LAYERS)
def test_a_core_module_imports_only_modules_below_it(module):
    below = set(LAYERS[: LAYERS.index(module)])
    assert core_imports(module) - below == set()


@pytest.mark.parametrize("module", ["processor", "stage"])
def test_processors_and_stages_never_reach_for_the_runner(module):
    assert "_runner" not in (PACKAGE / f"{module}.py").read_text()


def test_the_readme_states_the_same_order():
    text = (ROOT / "README.md").read_text()
    how = text[text.index("## How it works") :]
    sentence = re.search(r"The core imports.*?\.\s", how, re.S)
    assert sentence is not None, "README.md's How it works no longer states the order"
    assert re.findall(r"`(\w+)`", sentence.group()) == LAYERS
