"""The layout's rules, read from the code's own imports: arrows only point down, no cycles, Ray and MLflow stay in
their packages, and every package says in one sentence what it owns.

Every `import` statement counts, at module level or inside a function (a lazy import is still an arrow), except the
ones under `if TYPE_CHECKING:` (annotations only: nothing runs).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "metadist"
GENERATED = {"metadist.serving.fewshot_pb2", "metadist.serving.fewshot_pb2_grpc"}

# Bottom to top. A unit (top-level module or package) may import only from units strictly below it, and from itself.
LAYERS: list[set[str]] = [
    {"errors", "runtime", "version"},
    {"config"},
    {"data", "models"},
    {"algorithms"},
    {"core"},
    {"inference"},
    {"tracking"},
    {"training"},
    {"distributed"},
    {"submission", "serving", "api", "tune"},
    {"cli"},
    {"__main__"},
]
RANK = {unit: rank for rank, units in enumerate(LAYERS) for unit in units}
# Which units may import these outside libraries at all.
OWNERS = {"ray": {"distributed", "submission", "tune"}, "mlflow": {"tracking"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "__init__"


def imports_of(path: Path) -> set[tuple[str, str | None]]:
    """(module, name) of everything `path` imports (name None for `import module`), TYPE_CHECKING blocks left out."""
    tree = ast.parse(path.read_text(), str(path))
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(n) for child in node.body for n in ast.walk(child))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found.update((base, alias.name) for alias in node.names)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    """module → the metadist modules and outside top-level packages it imports."""
    modules = {module_name(p): p for p in ROOT.rglob("*.py")}
    edges: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        if name in GENERATED:
            continue
        for base, member in imports_of(path):
            if base == "metadist" or base.startswith("metadist."):
                # `from metadist.x import y` names the module metadist.x.y when y is one, else metadist.x.
                target = f"{base}.{member}" if member and f"{base}.{member}" in modules else base
                while target not in modules and "." in target:
                    target = target.rpartition(".")[0]
                if target in modules and target != name:
                    edges[name].add(target)
            else:
                edges[name].add(base.split(".")[0])
    return edges


def test_the_graph_is_read_from_the_code(graph):
    assert "metadist.training.loop" in graph["metadist.training.local"]
    assert "ray" in graph["metadist.distributed.worker"] and "mlflow" in graph["metadist.tracking.mlflow_tracker"]
    assert set(RANK) >= {unit_of(m) for m in graph if unit_of(m) != "__init__"}, "a new unit needs a place in LAYERS"


def test_arrows_only_point_down(graph):
    wrong = []
    for module, imported in graph.items():
        here = unit_of(module)
        for target in imported:
            if not target.startswith("metadist."):
                continue
            there = unit_of(target)
            if there != here and here != "__init__" and RANK[there] >= RANK[here]:
                wrong.append(f"{module} → {target}")
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(sorted(wrong))


def test_ray_and_mlflow_are_imported_only_by_their_owners(graph):
    wrong = [f"{module} imports {lib}" for module, imported in graph.items() for lib, owners in OWNERS.items()
             if lib in imported and unit_of(module) not in owners]
    assert not wrong, "\n".join(sorted(wrong))


def test_no_module_cycles(graph):
    internal = {m: {t for t in ts if t.startswith("metadist.")} for m, ts in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        stack.append(module)
        for target in sorted(internal.get(module, ())):
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[module] = 2
        return None

    for module in sorted(internal):
        if module not in state and (cycle := visit(module)):
            pytest.fail("import cycle: " + " → ".join(cycle))


def test_every_package_says_what_it_owns_in_one_sentence():
    for init in sorted(ROOT.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc, f"{init}: no docstring saying what the package owns"
        first = doc.split("\n\n")[0].replace("\n", " ")
        assert first.endswith(".") and first.count(". ") == 0, f"{init}: the opening paragraph should be one sentence: {first!r}"
