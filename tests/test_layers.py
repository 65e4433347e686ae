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

PACKAGES = {
    "sip": set(),
    "agents": {"core"},
    "audio": {"core"},
    "serializers": {"core"},
    "telemetry": {"core"},
    "services": {"core", "audio", "telemetry"},
    "transports": {"core", "audio", "serializers", "sip"},
    "server": {
        "core",
        "agents",
        "audio",
        "serializers",
        "services",
        "sip",
        "telemetry",
        "transports",
    },
}
"""The packages above the core, and what each may import: ``"core"`` is any module of
LAYERS. The SIP core is Sans-I/O and imports nothing of flowcat_ft; services and
transports know nothing of each other; only the server assembles them all."""


def core_imports(module: str) -> set[str]:
    """The flowcat_ft modules ``module`` imports, wherever the import statement is."""
    return imports(PACKAGE / f"{module}.py")


def imports(path: Path) -> set[str]:
    """The flowcat_ft modules the file at ``path`` imports (dotted, without the
    ``flowcat_ft.`` prefix), wherever the import statement is."""
    tree = ast.parse(path.read_text())
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


def test_every_package_is_placed():
    packages = {path.parent.name for path in PACKAGE.glob("*/__init__.py")}
    assert packages == set(PACKAGES)


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_a_package_imports_only_what_lies_below_it(package):
    allowed = PACKAGES[package] | {package}
    found = set()
    for path in (PACKAGE / package).rglob("*.py"):
        for name in imports(path):
            top = name.partition(".")[0]
            found.add("core" if top in LAYERS else top)
    assert found - allowed == set()


@pytest.mark.parametrize("module", ["processor", "stage"])
def test_processors_and_stages_never_reach_for_the_runner(module):
    assert "_runner" not in (PACKAGE / f"{module}.py").read_text()


def test_the_readme_states_the_same_order():
    text = (ROOT / "README.md").read_text()
    how = text[text.index("## How it works") :]
    sentence = re.search(r"The core imports.*?\.\s", how, re.S)
    assert sentence is not None, "README.md's How it works no longer states the order"
    assert re.findall(r"`(\w+)`", sentence.group()) == LAYERS
