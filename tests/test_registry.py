"""Stage code dependencies: the static import closure (tasks/code_deps.py) against what runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.code_deps import import_closure
from tasks.registry import STAGES
from tests.helpers import REPO_ROOT


def _loaded_repo_files(module: str) -> set[str]:
    """Repo source files a fresh interpreter has executed after `import module` (the dynamic closure)."""
    code = (
        f"import importlib, json, sys\nimportlib.import_module({module!r})\n"
        "root = sys.argv[1]\n"
        "files = {m.__file__ for m in list(sys.modules.values()) if getattr(m, '__file__', None)}\n"
        "print(json.dumps(sorted(f[len(root) + 1:] for f in files if f.startswith(root + '/') and '/.venv/' not in f)))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(REPO_ROOT)], cwd=REPO_ROOT, capture_output=True,
                          text=True, check=True)
    return set(json.loads(done.stdout))


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_static_closure_covers_every_module_an_import_runs(stage):
    module = STAGES[stage].target.partition(":")[0]
    loaded = _loaded_repo_files(module)
    assert loaded, "the dynamic check found no repo file"
    missing = loaded - set(STAGES[stage].code)
    assert not missing, f"stage {stage} runs {sorted(missing)} but does not declare them"


def test_closure_on_a_hand_built_package(tmp_path):
    # tasks/ is one of the repo's package names; build a miniature repo with one of each import form.
    files = {
        "tasks/__init__.py": "",
        "tasks/stage.py": "from tasks import helper\nfrom . import rel\n\ndef run():\n    import model.lazy\n",
        "tasks/helper.py": "import os\nfrom model.sub.leaf import thing\n",
        "tasks/rel.py": "",
        "tasks/unused.py": "import model.never\n",
        "model/__init__.py": "",
        "model/lazy.py": "import numpy\n",
        "model/sub/__init__.py": "",
        "model/sub/leaf.py": "thing = 1\n",
        "model/never.py": "",
    }
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    assert import_closure("tasks.stage", root=tmp_path) == (
        "model/__init__.py", "model/lazy.py", "model/sub/__init__.py", "model/sub/leaf.py",
        "tasks/__init__.py", "tasks/helper.py", "tasks/rel.py", "tasks/stage.py",
    )


def test_declared_deps_follow_what_changes_results():
    train, evaluate, qp = STAGES["train"].code, STAGES["evaluate"].code, STAGES["qp_benchmark"].code
    for code in (train, evaluate):
        assert not any(path.startswith("tasks/report") for path in code)  # the report's code never retrains a cell
        assert "tasks/tuning.py" not in code  # nor does the tuning study's
        assert "env/render.py" not in code  # nor does a plot colour
        assert not any(path.startswith("flows/") for path in code)
    compiled = [path for path in qp if "compiled" in path or path.startswith("model/qp")]
    assert compiled, qp
    for path in compiled:  # the compiled QP loop moves every stage that solves QPs
        assert path in train and path in evaluate
    for stage in ("train", "evaluate"):  # orchestration values never change a result
        assert not any(p.startswith("orchestration") for p in STAGES[stage].params)


def test_the_resume_fingerprint_hashes_the_declared_files(monkeypatch):
    from tasks import train

    train.code_fingerprint.cache_clear()
    before = train.code_fingerprint()
    seen: list[Path] = []
    real = Path.read_bytes

    def spy(self):
        seen.append(self)
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", spy)
    train.code_fingerprint.cache_clear()
    assert train.code_fingerprint() == before
    assert sorted(p.relative_to(REPO_ROOT).as_posix() for p in seen) == sorted(STAGES["train"].code)
