"""The package's shape: no import circles, and the library never imports the command line.

The import graph is read from the source (``ast``), including imports inside functions, so a
circle hidden in a function body (the kind that works until someone reorders two modules) fails
here too.
"""

import ast
from pathlib import Path

import scoresde

ROOT = Path(scoresde.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The scoresde modules ``path`` imports (``from . import x`` resolved to ``pkg.x`` if a module)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("scoresde")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("scoresde"):
                continue
            found.add(target)
            found |= {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in modules}
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: _imports(path, set(files)) for name, path in files.items()}


def _parents(name: str) -> set[str]:
    """A module's enclosing packages, whose ``__init__`` runs first on import (not a circle)."""
    parts = name.split(".")
    return {".".join(parts[:k]) for k in range(1, len(parts))}


def test_no_import_circle():
    graph = {m: {d for d in deps if d not in _parents(m)} for m, deps in _graph().items()}
    # A package's __init__ re-exports its modules: an edge module -> its own package's __init__
    # is only the package being initialised, so those are left out above. Find any cycle left.
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_library_does_not_import_the_cli():
    offenders = {m: sorted(d for d in deps if d == "scoresde.cli" or d.startswith("scoresde.cli."))
                 for m, deps in _graph().items() if not m.startswith("scoresde.cli")}
    assert not {m: d for m, d in offenders.items() if d}


def test_the_graph_reader_sees_imports():
    # guards the two tests above against a reader that finds nothing
    graph = _graph()
    assert "scoresde.sde" in graph["scoresde.score"]
    assert "scoresde.cli.runs" in graph["scoresde.cli.train"]
    assert "scoresde.runs" in graph["scoresde"]
