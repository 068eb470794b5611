"""The package's dependency direction, read from the source with ``ast`` (every import, also those inside functions),
and its lazy face: ``import invdiff`` imports no subpackage (nor torch) until one is used."""
import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

import invdiff

PACKAGE = Path(invdiff.__file__).parent
#: leaf utilities anything may import (they import nothing of invdiff but each other)
LEAVES = {"_validate", "io_utils", "config"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Fully qualified invdiff modules (or module attributes) that ``path`` imports, relative imports resolved."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "invdiff"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "invdiff":
                continue
            if node.module is None or target == "invdiff":  # from .. import schedules: the named modules
                out |= {f"{target}.{a.name}" for a in node.names}
            else:
                out.add(target)
    return out


def _part(module: str) -> str:
    """The area of the package a module belongs to: 'operators', 'priors', 'jobs', ... ('invdiff' for the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "invdiff"


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    """area -> areas it imports (itself and the package root excluded)."""
    g = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        src = _part(_module_name(path))
        g[src] |= {_part(t) for t in _imports(path)} - {src, "invdiff"}
    return dict(g)


def test_parser_sees_the_known_edges(graph):
    # guards the parser itself: edges that exist, through relative, nested and function-level imports
    assert "operators" in graph["solvers"] and "priors" in graph["solvers"]
    assert "schedules" in graph["priors"]          # from .. import schedules as S (priors/loaders)
    assert "datasets" in graph["training"]         # a function-level import
    assert {"jobs", "solvers"} <= graph["bench"]


@pytest.mark.parametrize("area, forbidden", [
    ("datasets", {"solvers", "priors", "training", "jobs", "bench", "reconstruct", "acquire", "cli", "demo"}),
    ("priors", {"datasets", "solvers", "training", "jobs", "bench", "reconstruct", "acquire", "cli", "demo"}),
    ("solvers", {"datasets", "training", "jobs", "bench", "reconstruct", "acquire", "cli", "demo"}),
    ("training", {"solvers", "bench", "reconstruct", "acquire", "cli", "demo"}),
    ("jobs", {"datasets", "training", "bench", "reconstruct", "acquire", "cli", "demo"}),
    ("bench", {"reconstruct", "acquire", "cli", "demo", "training"}),
])
def test_dependency_direction(graph, area, forbidden):
    assert not graph.get(area, set()) & forbidden, f"{area} imports {sorted(graph[area] & forbidden)}"


def test_operators_import_only_leaf_utilities(graph):
    assert graph["operators"] <= LEAVES, f"operators imports {sorted(graph['operators'] - LEAVES)}"
    for leaf in LEAVES:
        assert graph.get(leaf, set()) <= LEAVES, f"{leaf} imports {sorted(graph[leaf] - LEAVES)}"


def test_no_cycles_between_areas(graph):
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in graph.get(node, ()):
            assert state.get(nxt) != "open", "import cycle: " + " -> ".join(stack + [node, nxt])
            if nxt not in state:
                visit(nxt, stack + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_root_imports_nothing_eagerly():
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    eager = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
             and (getattr(n, "level", 0) or any(a.name.startswith("invdiff") for a in n.names)
                  or (getattr(n, "module", None) or "").startswith("invdiff"))]
    assert not eager, [ast.unparse(n) for n in eager]
    out = subprocess.run([sys.executable, "-c", "import sys, invdiff; print(sorted(m for m in sys.modules "
                          "if m.startswith(('invdiff.', 'torch'))))"], capture_output=True, text=True, timeout=120,
                         cwd=str(PACKAGE.parent))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_package_face_resolves_lazily():
    for expr in ("operators.MultiCoilMRI", "priors.load", "solvers.available", "metrics.psnr", "datasets.ct_phantoms",
                 "training.train", "jobs.run_items", "solve", "Reconstruction"):
        obj = invdiff
        for attr in expr.split("."):
            obj = getattr(obj, attr)
        assert obj is not None, expr
    assert {"operators", "priors", "solvers", "datasets", "training"} <= set(dir(invdiff))
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        invdiff.nonexistent  # noqa: B018
