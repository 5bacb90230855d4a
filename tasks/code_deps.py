"""A stage's code dependencies: the static import closure of its module inside this repo.

DVC re-runs a stage when one of its declared deps changes, and the train stage's resume key
hashes the same files (`tasks.train.code_fingerprint`). Declaring folders (all of env/, model/)
retrained every cell after an edit to a plot colour; declaring files by hand missed modules
(the compiled QP loop). So the registry computes the list: every repo module the stage's module
imports, transitively, including imports inside functions (lazy imports run too, just later)
and the `__init__.py` of every package on the way (Python executes them on import).

Static on purpose: it reads the source with `ast`, imports nothing, and sees imports that a
given run may not execute. `tests/test_registry.py` checks it against what a fresh interpreter
actually loads.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("env", "model", "tasks", "flows")
"""Top-level packages of this repo; imports of anything else are third-party."""


def module_file(module: str, root: Path = REPO_ROOT) -> Path | None:
    """The source file of a dotted repo module (`pkg/mod.py` or `pkg/mod/__init__.py`), or None."""
    parts = module.split(".")
    if parts[0] not in PACKAGES:
        return None
    base = root.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_inits(module: str, root: Path) -> list[str]:
    """`a`, `a.b` for module `a.b.c`: the packages whose __init__ runs first."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts)) if module_file(".".join(parts[:i]), root)]


def _imported_modules(path: Path, module: str, root: Path) -> set[str]:
    """Repo modules named by the import statements of one file (anywhere in it)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # `from pkg import name` imports pkg, and pkg.name too when name is a submodule.
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES and module_file(name, root):
                found.add(name)
    return found


@functools.lru_cache(maxsize=None)
def _closure(module: str, root: Path) -> tuple[str, ...]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        path = module_file(current, root)
        if path is None:
            raise ModuleNotFoundError(f"{current} is not a module of this repo (looked under {root})")
        todo.extend(_package_inits(current, root))
        todo.extend(_imported_modules(path, current, root))
    files = {module_file(m, root).relative_to(root).as_posix() for m in seen}
    return tuple(sorted(files))


def import_closure(*modules: str, root: Path = REPO_ROOT) -> tuple[str, ...]:
    """Repo-relative source files (sorted) that importing `modules` can execute."""
    files: set[str] = set()
    for module in modules:
        files.update(_closure(module, Path(root)))
    return tuple(sorted(files))
