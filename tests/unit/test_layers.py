"""The layering rules: no import circle among first-party modules, no benchmark inside the library or the
service, and an ml/ that knows nothing of the service.

Imports are read with `ast`, at module level and inside functions alike (a lazy import inside a function is
still a dependency). The checker takes a root folder, so it can be pointed at any checkout:
`python tests/unit/test_layers.py /path/to/tree` prints what it finds there.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("app", "worker", "ml", "bench")
# What the library must not import: the service, the worker, the benchmarks, and web/database/queue packages.
ML_FORBIDDEN = (
    *("app", "worker", "bench"),
    *("fastapi", "starlette", "pydantic", "sqlalchemy", "alembic", "celery", "redis"),
)


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def first_party_modules(root: Path) -> dict[str, Path]:
    """Every first-party module under `root` (dotted name -> file)."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        base = root / package
        if base.is_dir():
            for path in sorted(base.rglob("*.py")):
                found[_module_name(root, path)] = path
    return found


def imported_names(path: Path, module: str) -> set[str]:
    """Every dotted name the file imports, anywhere in it (relative imports made absolute).

    `from a.b import c` yields both `a.b` and `a.b.c` (c may be a module); the caller keeps what exists.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = module.split(".")
                keep = len(base_parts) - node.level + (1 if is_package else 0)
                base = ".".join(base_parts[:keep] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The deepest first-party module a dotted import name refers to (None: not first-party)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts.pop()
    return None


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the first-party modules it imports (module level and inside functions)."""
    modules = first_party_modules(root)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = {_resolve(n, modules) for n in imported_names(path, module)}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (each one or more import circles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:  # Tarjan; the graph is a few hundred modules, recursion depth is fine
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def bench_modules_in_library(root: Path) -> list[str]:
    """Benchmark modules inside app/ or ml/ (they belong in bench/)."""
    return sorted(m for m in first_party_modules(root) if m.split(".")[0] in ("app", "ml") and "bench" in m)


def ml_forbidden_imports(root: Path) -> list[str]:
    """`module -> imported name` for every import in ml/ of the service, the benchmarks or a web/db package."""
    found = []
    for module, path in first_party_modules(root).items():
        if module.split(".")[0] != "ml":
            continue
        for name in sorted(imported_names(path, module)):
            if name.split(".")[0] in ML_FORBIDDEN:
                found.append(f"{module} -> {name}")
    return found


def layer_problems(root: Path) -> list[str]:
    """Every broken rule under `root`, one line each (empty: the layering holds)."""
    problems = [f"import circle: {' <-> '.join(c)}" for c in import_cycles(import_graph(root))]
    problems += [f"benchmark module inside the library/service: {m}" for m in bench_modules_in_library(root)]
    problems += [f"ml imports the service side: {m}" for m in ml_forbidden_imports(root)]
    return problems


def test_no_import_circles() -> None:
    cycles = import_cycles(import_graph(ROOT))
    assert not cycles, "import circles among first-party modules:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_no_benchmark_modules_in_app_or_ml() -> None:
    assert bench_modules_in_library(ROOT) == []


def test_ml_imports_nothing_from_the_service() -> None:
    assert ml_forbidden_imports(ROOT) == []


def test_checker_sees_function_level_imports(tmp_path: Path) -> None:
    for name, body in {
        "app/__init__.py": "",
        "app/a.py": "import app.b\n",
        "app/b.py": "def f():\n    from app import a\n    return a\n",
        "app/c.py": "from . import b\n",
    }.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    assert import_cycles(import_graph(tmp_path)) == [["app.a", "app.b"]]


if __name__ == "__main__":
    where = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT
    found = layer_problems(where)
    print("\n".join(found) or f"{where}: no layering problems")
    raise SystemExit(1 if found else 0)
