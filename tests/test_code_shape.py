"""The code keeps the shape STYLE.md asks for, read from the source with `ast`: small modules, short
functions, no private name borrowed across modules, and no import cycle between medvec's subpackages."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOMAIN = ROOT / "medvec"
#: Every folder whose imports are read for borrowed private names.
IMPORTERS = ("medvec", "assets", "pipelines", "resources", "benchmarks")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
#: Files allowed to break a rule for now, each with the reason (none today: keep it that way).
PENDING: set[str] = set()
#: Subpackage imports allowed to close a cycle, each with the work that removes it (none today).
#: Command-line tools inside the package that nothing imports: their imports close no cycle.
SCRIPTS = {
    # The demo model's training recipe: it prepares images with the embedder's own preparation (training sees
    # what embedding sees) and writes captions in the evaluation's and fallback queries' words.
    "medvec/models/demo_clip/train.py", "medvec/models/demo_clip/data.py", "medvec/models/demo_clip/captions.py",
}
PENDING_EDGES: set[tuple[str, str]] = {
    # Settings types the home with storage's paths, while storage and its S3 client take their defaults
    # (endpoint, region) from Settings, lazily, inside functions. Passing the endpoint and region down
    # from every caller's Settings would remove these edges.
    ("storage", "settings"), ("s3_path", "settings"),
}


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _modules(folder: Path = DOMAIN) -> list[Path]:
    return sorted(p for p in folder.rglob("*.py") if "node_modules" not in p.parts)


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_argument_table(node: ast.AST) -> bool:
    """A function that is mostly `add_argument`/`add_parser` calls: a table of options, long by nature."""
    calls = [n for n in ast.walk(node) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
    table = sum(1 for c in calls if c.func.attr in ("add_argument", "add_parser", "set_defaults"))
    statements = sum(1 for n in ast.walk(node) if isinstance(n, ast.stmt))
    return table * 2 >= statements


def _typing_only(tree: ast.Module) -> set[ast.AST]:
    """Imports under `if TYPE_CHECKING:`: names for annotations, never loaded, so they make no cycle."""
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            guarded |= {n for stmt in node.body for n in ast.walk(stmt)}
    return guarded


def _imports_from(path: Path, *, runtime_only: bool = False):
    """(module, name) for every `from module import name` in the file, relative imports resolved."""
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    tree = _tree(path)
    skipped = _typing_only(tree) if runtime_only else set()
    for node in ast.walk(tree):
        if node in skipped:
            continue
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                yield base, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None


def test_no_module_over_400_lines():
    long = {_relative(p): n for p in _modules() if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES}
    assert {k: v for k, v in long.items() if k not in PENDING} == {}


def test_no_function_over_60_lines():
    long = {}
    for path in _modules():
        if _relative(path) in PENDING:
            continue
        for node in ast.walk(_tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and not _is_argument_table(node):
                    long[f"{_relative(path)}:{node.name}"] = lines
    assert long == {}


def test_no_private_name_imported_across_modules():
    borrowed = []
    for folder in IMPORTERS:
        for path in _modules(ROOT / folder):
            for module, name in _imports_from(path):
                source = ROOT / (module.replace(".", "/") + ".py")
                if name and name.startswith("_") and not name.startswith("__") and module.split(".")[0] in (
                        "medvec", "assets", "pipelines", "resources") \
                        and not {_relative(path), _relative(source) if source.exists() else ""} & PENDING:
                    borrowed.append(f"{_relative(path)}: from {module} import {name}")
    assert borrowed == []


def _subpackage(module: str) -> str | None:
    """`medvec.tables.images` → `tables`; a top-level module (`medvec.storage`) is its own unit."""
    parts = module.split(".")
    return parts[1] if parts[0] == "medvec" and len(parts) > 1 else None


def test_no_import_cycle_between_medvec_subpackages():
    edges: dict[str, set[str]] = {}
    for path in _modules():
        if _relative(path) in SCRIPTS:
            continue
        here = _subpackage(_module_name(path))
        for module, name in _imports_from(path, runtime_only=True):
            target = _subpackage(module) or (_subpackage(f"{module}.{name}") if module == "medvec" and name else None)
            if here and target and target != here and (here, target) not in PENDING_EDGES:
                edges.setdefault(here, set()).add(target)
    cycles = set()

    def walk(node: str, trail: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt in trail:
                cycle = trail[trail.index(nxt):]
                start = cycle.index(min(cycle))
                cycles.add(" -> ".join(cycle[start:] + cycle[:start] + [min(cycle)]))
            elif len(trail) < len(edges) + 1:
                walk(nxt, trail + [nxt])

    for node in sorted(edges):
        walk(node, [node])
    assert sorted(cycles) == []
