"""The package layering of docs/design.md: `shoal/` (formats, parameters, algorithms shared by all)
never imports `services/`, and no module imports itself through others, at any depth. Imports
inside functions count too (a lazy import is still a dependency); those under `if TYPE_CHECKING:`
do not (they never run)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("shoal", "services")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for package in PACKAGES for path in (ROOT / package).rglob("*.py")
            if "v1" not in path.relative_to(ROOT).parts}  # generated gRPC code


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports (`from a.b import c` counts a.b.c when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    typing_only = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING")
                   for inner in ast.walk(node)}  # annotations only: never imported at run time
    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target not in PACKAGES:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def test_shoal_never_imports_services():
    offenders = sorted(f"{name} imports {target}" for name, targets in _graph().items() if name.startswith("shoal")
                       for target in targets if target.startswith("services"))
    assert not offenders, offenders


def test_no_module_imports_itself_through_others():
    graph = _graph()
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, [*path, target])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, cycles


def test_the_import_graph_sees_known_edges():
    """The checks above are only as good as the graph: it must see lazy, relative and `from` imports."""
    graph = _graph()
    assert "shoal.session" in graph["services.assembler.main"]  # from shoal.session import (...)
    assert "services.segmenter.work" in graph["services.segmenter.main"]  # from .work import ...
    assert "shoal.export" in graph["shoal.cli.outputs"]  # imported inside cmd_export
