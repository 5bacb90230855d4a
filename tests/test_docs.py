"""The README and docs/ name tests and files as the guards and homes of what they say; those names
must stay true as code moves (nothing else reads these files: docs/TOOLCHAIN.md, "Files that DVC
does not track drift unseen")."""

from __future__ import annotations

import ast
import re

from tests.helpers import REPO_ROOT

DOCUMENTS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
TEST_ID = re.compile(r"\b(tests/test_\w+\.py)::(\w+)")
REPO_PATH = re.compile(r"\b((?:env|model|tasks|flows|benchmarks|scripts|tests|docs|data)/[\w./-]+\.(?:py|md|sh|yaml))\b")


def _test_functions(path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def _named(pattern: re.Pattern, text: str) -> list:
    return sorted(set(pattern.findall(text)))


def test_every_test_the_docs_name_exists():
    named, missing = 0, []
    for document in DOCUMENTS:
        for path, name in _named(TEST_ID, document.read_text()):
            named += 1
            file = REPO_ROOT / path
            if not file.is_file() or name not in _test_functions(file):
                missing.append(f"{document.name}: {path}::{name}")
    assert named >= 20, named  # docs/TOOLCHAIN.md alone names more
    assert not missing, missing


def test_every_file_the_docs_name_exists():
    named, missing = 0, []
    for document in DOCUMENTS:
        for path in _named(REPO_PATH, document.read_text()):
            named += 1
            if not (REPO_ROOT / path).exists():
                missing.append(f"{document.name}: {path}")
    assert named >= 50, named
    assert not missing, missing


def test_the_checks_see_a_stale_name():
    """The control: a renamed test and a moved file are caught by the same patterns."""
    text = "guard: `tests/test_docs.py::test_that_was_renamed`; code: `model/moved_away.py`"
    assert _named(TEST_ID, text) == [("tests/test_docs.py", "test_that_was_renamed")]
    assert "test_that_was_renamed" not in _test_functions(REPO_ROOT / "tests/test_docs.py")
    assert _named(REPO_PATH, text) == ["model/moved_away.py", "tests/test_docs.py"]
    assert not (REPO_ROOT / "model/moved_away.py").exists()
