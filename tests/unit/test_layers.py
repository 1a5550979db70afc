"""The package's shape (docs/design.md, "Layers"): layers import only downward, no module imports
itself back through others, the sync drivers are the generated image of the async ones, and no
source file grows past 600 lines."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "coordinator"
#: Bottom first. A module may import its own layer and the ones before it in this list.
LAYERS = ["core", "rules", "store", "transport", "drivers", "observe", "testing", "cli"]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every coordinator module ``path`` imports at module level or in a function (TYPE_CHECKING too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.startswith("coordinator"):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("coordinator"))
    return found


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


@pytest.mark.parametrize("module", sorted(m for m in MODULES if layer_of(m)))
def test_a_layer_imports_only_layers_below_it(module: str) -> None:
    mine = LAYERS.index(layer_of(module))  # type: ignore[arg-type]
    for target in imports_of(MODULES[module]):
        theirs = layer_of(target)
        if target == "coordinator":
            # Only the layers above the library itself (CLI, testing, integrations) use the public API.
            assert mine >= LAYERS.index("observe"), f"{module} imports the package root"
        elif theirs is not None:
            assert LAYERS.index(theirs) <= mine, f"{module} ({LAYERS[mine]}) imports {target} ({theirs}), a layer above"


def test_no_import_cycle() -> None:
    graph = {m: {t for t in imports_of(p) if t in MODULES and t != m} for m, p in MODULES.items()}
    # The package root re-exports everything: it is the top, not a node of cycles below it.
    graph["coordinator"] = set()
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, path: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle.extend([*path[path.index(nxt):], nxt] if nxt in path else [node, nxt])
                return True
            if nxt not in state and visit(nxt, [*path, nxt]):
                return True
        state[node] = 2
        return False

    for start in sorted(graph):
        if start not in state and visit(start, [start]):
            break
    assert not cycle, " -> ".join(cycle)


def test_no_source_file_over_600_lines() -> None:
    sources = [*PACKAGE.rglob("*.py"), *(ROOT / "lua").rglob("*.lua")]
    long = {str(p.relative_to(ROOT)): n for p in sources if (n := len(p.read_text().splitlines())) > 600}
    assert not long


def test_generated_sync_drivers_are_current() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "unasync.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_generated_files_say_so_in_their_first_line() -> None:
    for path in (PACKAGE / "drivers" / "_sync").glob("*.py"):
        first = path.read_text().splitlines()[0]
        assert first.startswith("# GENERATED from coordinator/drivers/_async/"), path
