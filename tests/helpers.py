"""Shared by the end-to-end tests: tiny budgets and throw-away git + DVC workspaces."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tasks.params import apply_overrides

REPO_ROOT = Path(__file__).resolve().parent.parent
PYTHON_BIN = str(Path(sys.executable).parent)

# The whole pipeline in seconds on 2 CPU cores. Two of the four algorithms: these runs test the
# orchestration (flow, DVC, Dask, recovery), and every stage's cost grows with the cells and arms.
# test_pipeline_e2e runs all four algorithms and all nine arms end to end; each algorithm has its
# own training and evaluation tests (test_train, test_shielded, test_cbf_beta).
TINY_PIPELINE = {
    "train.algos": ["barriernet", "baseline"],
    "eval.arms": ["barriernet", "barriernet_rcbf", "baseline", "baseline_dcbf_filter", "baseline_tuned_filter"],
    "eval.filter_sweep.algos": ["baseline"],
    "env.max_steps": 64,
    "train.seeds": [0],
    "train.total_steps": 256,
    "train.num_envs": 8,
    "train.rollout_steps": 16,
    "train.num_minibatches": 2,
    "train.update_epochs": 1,
    "train.checkpoint_every": 1,
    "eval.dev_episodes": 4,
    "eval.test_episodes": 4,
    "eval.num_envs": 4,
    "qp_benchmark.batch_sizes": [1, 4],
    "qp_benchmark.repeats": 1,
    "qp_benchmark.warmup": 0,
    "qp_benchmark.devices": ["cpu"],
    # one dtype and one obstacle count: the benchmark's own tests cover the rest
    "qp_benchmark.dtypes": ["float64"],
    "qp_benchmark.obstacle_counts": [2],
    "decision.bootstrap_samples": 200,
    # one post-hoc filter configuration per form instead of the default grid
    "eval.filter_sweep.gammas": [0.2],
    "eval.filter_sweep.robust_margins": [0.0],
    # one scenario, two episodes, a short GIF (tests/test_scenarios.py covers the others)
    "scenarios.episodes": 2,
    "scenarios.names": ["head_on"],
    "scenarios.gif_frames": 4,
}


def make_workspace(dst: Path, params: dict | None = None) -> Path:
    """A copy of the repo's source files (no outputs) with `params` (dotted keys) set in its
    params.yaml, as a committed git + DVC workspace (DVCLive under `dvc repro` needs a HEAD)."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
    ).stdout.split("\n")
    for rel in filter(None, listed):
        # outputs stay behind, except the tuning study's committed choice (an input of the report)
        if rel.split("/")[0] in ("results", "reports", "runs") and not rel.startswith("results/tuning/"):
            continue
        if rel.endswith("dvc.lock"):
            continue
        src = REPO_ROOT / rel
        if src.is_file():
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)  # with its mtime: the compiled caches below check it
    _copy_compiled_caches(dst)
    raw = apply_overrides(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()), params or {})
    (dst / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dst, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "workspace"], cwd=dst, check=True)
    return dst


def _copy_compiled_caches(dst: Path) -> None:
    """Copy the repo's byte-code and numba caches (`__pycache__`, git-ignored) into a workspace.

    A fresh workspace would otherwise JIT-compile the QP kernels again in its first process
    (about 18 s on a 2-core machine, per workspace). Both caches are keyed by the source file's
    mtime and size, which `shutil.copy2` kept, so a copy is used exactly when the source is the
    same; anything stale is recompiled as usual."""
    packages = [top for top in REPO_ROOT.iterdir() if (top / "__init__.py").is_file()]
    for cache in (c for top in packages for c in top.glob("**/__pycache__")):
        rel = cache.relative_to(REPO_ROOT)
        if (dst / rel.parent).is_dir():
            shutil.copytree(cache, dst / rel, dirs_exist_ok=True)


def run(cmd: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    """Run with this interpreter's bin first on PATH (dvc.yaml's commands call `python`)."""
    full_env = {**os.environ, "PATH": PYTHON_BIN + os.pathsep + os.environ.get("PATH", ""), **env}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=full_env)


def run_dvc(workspace: Path, *args: str, **env) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], workspace, **env)


def same_bits(a, b) -> bool:
    """Two tensors have the same dtype, shape and bytes. Unlike `torch.equal`, a zero's sign counts
    (NumPy's and torch's maximum keep different zeros on a tie: docs/TOOLCHAIN.md)."""
    def raw(x):
        return x.detach().cpu().contiguous().numpy().tobytes()

    return a.dtype == b.dtype and a.shape == b.shape and raw(a) == raw(b)
