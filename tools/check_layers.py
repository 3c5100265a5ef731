"""Check that ``src/cropdoc`` imports one way: no circle, nothing reaching up a layer.

The layers are the table between the ``layers:begin`` and ``layers:end`` markers of
``docs/architecture.md``, lowest first; each row names modules (``cropdoc.data.*`` for a
whole subpackage, its ``__init__`` included). Every import counts, at module level, inside a
function and under ``TYPE_CHECKING``: a module may import from its own layer or a lower one.
``from cropdoc import NAME`` of the lazy public API counts as an import of the module that
defines NAME (the ``_API`` table of the package's ``__init__``); ``importlib.import_module``
or ``__import__`` of a package module is flagged, as it hides an import from this check
(the package's own lazy ``__getattr__`` excepted: its table is read instead).
A layer whose name ends in "(no torch)" imports no torch: none of its modules imports torch,
timm, torchvision or ``safetensors.torch``, or a module of a layer that may, when it runs
(``TYPE_CHECKING`` imports, which never run, excepted).
Whether a model is tiled is asked in ``KIND_MODULES`` only (the ``--tile`` setting, the
bundle's ``tiles`` and ``contract.kinds``): anywhere else, a condition (``if``, ``... if
... else``, ``and``, ``or``, ``not``, a comprehension's filter) that reads a ``tile``
attribute or key is flagged; the rest of the code calls the model's kind
(``cropdoc.model.kinds``).
Exits 1 and prints each circle, upward and hidden import and each such condition; 0 when
the code is clean.

    python tools/check_layers.py
"""

from __future__ import annotations

import ast
import fnmatch
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "cropdoc"
DOC = ROOT / "docs" / "architecture.md"
# where the tile flag is read: set (--tile), checked in model.json, and told apart as kinds
KIND_MODULES = ("cropdoc.config", "cropdoc.contract.bundle", "cropdoc.contract.kinds")
# the one module that imports timm: it keeps timm's own `import wandb` out (seconds a process)
TIMM_MODULE = "cropdoc.model.timm_import"


def modules(package: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def lazy_api(init: Path) -> dict[str, str]:
    """The lazy public API of a package: its ``__init__``'s ``_API = {"NAME": "module"}``."""
    if not init.exists():
        return {}
    for node in ast.walk(ast.parse(init.read_text(encoding="utf-8"), str(init))):
        if (
            isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "_API" for t in node.targets)
            and isinstance(node.value, ast.Dict)
        ):
            return {
                k.value: v.value
                for k, v in zip(node.value.keys, node.value.values, strict=True)
                if isinstance(k, ast.Constant) and isinstance(v, ast.Constant)
            }
    return {}


def named(node: ast.Import | ast.ImportFrom, package: str, known: set[str], api=None) -> set[str]:
    """What one import statement names, by dotted name: ``from a import b`` as ``a.b`` when
    that is one of the ``known`` modules, as the defining module when ``b`` is in ``a``'s
    lazy API (``api``: package -> ``lazy_api``), else as ``a``; ``package``: the importing
    module's package, for relative imports."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    base = node.module or ""
    if node.level:
        anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*anchor, base] if base else anchor)
    found = set()
    for alias in node.names:
        child = f"{base}.{alias.name}"
        lazy = (api or {}).get(base, {}).get(alias.name)
        found.add(child if child in known else lazy or base)
    return found


def package_of(name: str, path: Path) -> str:
    """The package a module's relative imports start from: itself for an ``__init__.py``."""
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def imports(
    name: str, path: Path, known: set[str], api: dict[str, dict[str, str]] | None = None
) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in it (``named``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = package_of(name, path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found |= named(node, package, known, api)
    return {m for m in found if m in known and m != name}


def hidden_imports(name: str, path: Path, known: set[str]) -> list[str]:
    """What ``name`` imports by ``importlib.import_module(...)`` or ``__import__(...)``: the
    package module named, or the expression, when it is not a plain string (the root
    package's lazy ``__getattr__``, which reads its ``_API`` table, excepted)."""
    root = next(iter(sorted(known, key=len)))
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if called not in ("import_module", "__import__"):
            continue
        target = node.args[0]
        if isinstance(target, ast.Constant) and isinstance(target.value, str):
            if target.value.split(".")[0] == root:
                found.append(target.value)
        elif name != root:
            found.append(ast.unparse(target))
    return found


TORCH = ("torch", "timm", "torchvision", "safetensors.torch")
NO_TORCH = "(no torch)"


def runtime_imports(path: Path, package: str, known: set[str]) -> set[str]:
    """Every module ``path`` imports when it runs (``named``), skipping ``if TYPE_CHECKING:``
    blocks; ``package``: the module's package, for relative imports."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.update(named(node, package, known))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)))
    return found


def torch_imports(name: str, path: Path, known: set[str], free) -> list[str]:
    """What ``name`` (of a no-torch layer) imports when it runs that is torch or a package
    module for which ``free(module)`` is false."""
    package = package_of(name, path)
    found = []
    for target in sorted(runtime_imports(path, package, known)):
        torch = any(target == t or target.startswith(t + ".") for t in TORCH)
        if torch or (target in known and target != name and not free(target)):
            found.append(target)
    return found


def layers(doc: Path = DOC) -> list[tuple[str, list[str]]]:
    """The layer table of ``docs/architecture.md``: (layer, module patterns), lowest first."""
    text = doc.read_text(encoding="utf-8")
    block = text.split("<!-- layers:begin -->")[1].split("<!-- layers:end -->")[0]
    rows = []
    for line in block.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].isdigit():
            continue
        rows.append((cells[1], re.findall(r"`([^`]+)`", cells[2])))
    return rows


def layer_of(module: str, table: list[tuple[str, list[str]]]) -> int | None:
    """The index of the first layer whose patterns match ``module``."""
    for index, (_, patterns) in enumerate(table):
        if any(
            module in (p, p.removesuffix(".*")) or fnmatch.fnmatchcase(module, p) for p in patterns
        ):
            return index
    return None


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected group of two or more modules (Tarjan's)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def _reads_tile(node: ast.AST) -> bool:
    """Whether an expression reads ``X.tile``, ``X["tile"]`` or ``X.get("tile")``."""
    for part in ast.walk(node):
        if isinstance(part, ast.Attribute) and part.attr == "tile":
            return True
        key = part.slice if isinstance(part, ast.Subscript) else None
        if isinstance(part, ast.Call) and isinstance(part.func, ast.Attribute):
            key = part.args[0] if part.func.attr == "get" and part.args else None
        if isinstance(key, ast.Constant) and key.value == "tile":
            return True
    return False


def kind_branches(name: str, path: Path) -> list[int]:
    """The lines of ``path`` where a condition reads the tile flag."""
    lines = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.If | ast.IfExp | ast.While | ast.Assert):
            tests = [node.test]
        elif isinstance(node, ast.BoolOp):
            tests = node.values
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            tests = [node.operand]
        elif isinstance(node, ast.comprehension):
            tests = node.ifs
        else:
            continue
        lines.update(test.lineno for test in tests if _reads_tile(test))
    return sorted(lines)


def timm_imports(name: str, path: Path, known: set[str]) -> list[str]:
    """The timm modules ``name`` imports when it runs."""
    package = package_of(name, path)
    found = runtime_imports(path, package, known)
    return sorted(t for t in found if t == "timm" or t.startswith("timm."))


def problems(
    package: Path = PACKAGE,
    doc: Path = DOC,
    kind_modules: tuple[str, ...] = KIND_MODULES,
    timm_module: str = TIMM_MODULE,
) -> list[str]:
    """Every circle, upward import, module without a layer, condition on the tile flag
    outside ``kind_modules`` and import of timm outside ``timm_module``, one line each."""
    found = modules(package)
    api = {name: lazy_api(path) for name, path in found.items() if path.name == "__init__.py"}
    graph = {name: imports(name, path, set(found), api) for name, path in found.items()}
    table = layers(doc)
    out = [f"circle: {' <-> '.join(group)}" for group in circles(graph)]
    for name, path in found.items():
        for target in hidden_imports(name, path, set(found)):
            out.append(f"hidden: {name} imports {target} by name (import it plainly)")

    def free(module: str) -> bool:
        index = layer_of(module, table)
        return index is not None and table[index][0].endswith(NO_TORCH)

    for name, path in found.items():
        if free(name):
            for target in torch_imports(name, path, set(found), free):
                out.append(f"torch: {name} imports {target} (its layer imports no torch)")
    for name, path in found.items():
        if name in kind_modules:
            continue
        for line in kind_branches(name, path):
            out.append(f"kind: {name}:{line} asks whether the model is tiled (ask its kind)")
    for name, path in found.items():
        if name != timm_module:
            for target in timm_imports(name, path, set(found)):
                out.append(f"timm: {name} imports {target} (take timm from {timm_module})")
    for name in sorted(graph):
        own = layer_of(name, table)
        if own is None:
            out.append(f"no layer: {name} (add it to the table in docs/architecture.md)")
            continue
        for other in sorted(graph[name]):
            theirs = layer_of(other, table)
            if theirs is not None and theirs > own:
                out.append(f"upward: {name} ({table[own][0]}) imports {other} ({table[theirs][0]})")
    return out


def main() -> int:
    found = problems()
    for line in found:
        print(line)
    count = len(modules())
    print(f"check_layers: {count} modules, {len(found)} problems", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
