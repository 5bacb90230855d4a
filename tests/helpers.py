"""Shared by the end-to-end tests: tiny budgets and throw-away git + DVC workspaces."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tasks.params import apply_overrides

REPO_ROOT = Path(__file__).resolve().parent.parent
PYTHON_BIN = str(Path(sys.executable).parent)

# The whole pipeline in seconds on 2 CPU cores.
TINY_PIPELINE = {
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
    # two scenarios, two episodes each, short GIFs
    "scenarios.episodes": 2,
    "scenarios.names": ["head_on", "multi_obstacle_8"],
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
            (dst / rel).write_bytes(src.read_bytes())
    raw = apply_overrides(yaml.safe_load((REPO_ROOT / "params.yaml").read_text()), params or {})
    (dst / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q"], cwd=dst, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dst, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "workspace"], cwd=dst, check=True)
    return dst


def run(cmd: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    """Run with this interpreter's bin first on PATH (dvc.yaml's commands call `python`)."""
    full_env = {**os.environ, "PATH": PYTHON_BIN + os.pathsep + os.environ.get("PATH", ""), **env}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=full_env)


def run_dvc(workspace: Path, *args: str, **env) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *args], workspace, **env)
