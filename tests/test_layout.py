"""The package layout's import rules, read from the source with `ast` (imports inside functions and `if` blocks too).

Direction, lowest first (a package may import only those listed for it, and itself):

    annotation_config   the schema, Label Studio XML, regions, task/annotation fields: imports none of ours
    studio              the Label Studio client and data-source rule:    annotation_config
    training            fine-tuning, registry, trained predictor:        annotation_config, studio
    exchange            datasets in and out, agreement:                  annotation_config, studio, training
    backend             the ML backend, cold start, jobs:                annotation_config, studio, training
    bulk                `workbench predict` on Ray Data:                 annotation_config, studio, training, backend
    workbench           the command line and `up`, the top floor:        anything; nothing imports it

and no two modules import each other, directly or through others (no cycle in the module graph).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "annotation_config": set(),
    "studio": {"annotation_config"},
    "training": {"annotation_config", "studio"},
    "exchange": {"annotation_config", "studio", "training"},
    "backend": {"annotation_config", "studio", "training"},
    "bulk": {"annotation_config", "studio", "training", "backend"},
    "workbench": {"annotation_config", "studio", "training", "exchange", "backend", "bulk"},
}
PACKAGES = tuple(ALLOWED)


def module_name(path: Path, root: Path = ROOT) -> str:
    """`backend/cold_start/embedder.py` -> "backend.cold_start.embedder"; an `__init__.py` names its package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of the project's packages, by dotted name."""
    return {module_name(f, root): f for package in PACKAGES for f in sorted((root / package).rglob("*.py"))}


def imported_modules(path: Path, name: str, known: set[str]) -> Iterator[str]:
    """The project modules that the module `name` at `path` imports anywhere in its body."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package upwards
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import a.b.c` of a name inside a module: its module
                target = target.rpartition(".")[0]
            if target and target.split(".")[0] in PACKAGES and target != name:
                yield target


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """Module -> the project modules it imports."""
    modules = project_modules(root)
    known = set(modules)
    return {name: set(imported_modules(path, name, known)) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """ "a -> b" for every import that breaks the package direction (ALLOWED)."""
    bad = []
    for module, targets in sorted(graph.items()):
        package = module.split(".")[0]
        for target in sorted(targets):
            other = target.split(".")[0]
            if other != package and other not in ALLOWED[package]:
                bad.append(f"{module} -> {target}")
    return bad


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_sees_imports_inside_functions(graph):
    # backend.train_job imports training at module level; workbench.cli imports backend.instant_rival in a function
    assert "training.cli" in graph["backend.train_job"]
    assert "backend.instant_rival" in graph["workbench.cli"]
    assert len(graph) > 50  # every module of every package


def test_nothing_outside_workbench_imports_workbench(graph):
    assert [
        f"{m} -> {t}"
        for m, ts in graph.items()
        if not m.startswith("workbench")
        for t in ts
        if t.startswith("workbench")
    ] == []


def test_packages_import_only_downwards(graph):
    assert upward_imports(graph) == []


def test_no_import_cycles_between_modules(graph):
    assert cycles(graph) == []


def test_the_checks_catch_what_they_claim(tmp_path):
    """An upward import inside a function and a two-module loop, in a scratch tree, are both found."""
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "training" / "a.py").write_text("def f():\n    from backend import b\n")
    (tmp_path / "backend" / "b.py").write_text("import training.a\n")
    (tmp_path / "studio" / "c.py").write_text("from workbench import cli as x\n")
    found = import_graph(tmp_path)
    assert upward_imports(found) == ["studio.c -> workbench", "training.a -> backend.b"]
    assert cycles(found) == [["backend.b", "training.a"]]
