"""The Prefect server dies mid-run: `scripts/main.sh` says so and stops the run, and running the
same command again finishes it without retraining finished cells and with the same numbers as an
undisturbed run (issue 19, item 6).

One throw-away workspace (its own PREFECT_HOME, port, BARRIERNET_STATE_DIR): main.sh runs the
deployment with tiny overrides; once a training cell has finished, the server gets SIGKILL. Then
main.sh again, with the same arguments. The reference is the same cells trained, evaluated and
compared in this process from a fresh state directory.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.lock import lock_holder, lock_path, stale_record
from tasks.params import load_params
from tasks.registry import STAGES
from tests.helpers import REPO_ROOT, TINY_PIPELINE, make_workspace

OVERRIDES = {
    **TINY_PIPELINE,
    "train.seeds": [0, 1],  # four cells on two workers: some finish before the kill, some do not
    "train.total_steps": 512,  # 4 updates per cell, a checkpoint after each
    "orchestration.retry_delay_seconds": 0,
    "qp_benchmark.dtypes": ["float64"],
    "qp_benchmark.obstacle_counts": [2],
    "scenarios.names": ["head_on"],
    "scenarios.episodes": 1,
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _processes_mentioning(text: str) -> dict[int, str]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found[int(entry.name)] = cmdline
    return found


def _main_sh(workspace: Path, env: dict, log: Path) -> subprocess.Popen:
    handle = open(log, "w")
    return subprocess.Popen(
        ["bash", "scripts/main.sh", "--param", f"overrides={json.dumps(OVERRIDES)}"],
        cwd=workspace, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # main.sh's trap stops what it started
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _run_dirs(workspace: Path) -> list[Path]:
    runs = workspace / "runs"
    return sorted(runs.iterdir(), key=lambda p: p.stat().st_mtime) if runs.exists() else []


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_server_killed_mid_run_recovers_with_one_command(tmp_path, monkeypatch):
    started = time.monotonic()
    workspace = make_workspace(tmp_path / "ws")
    (workspace / ".venv").symlink_to(REPO_ROOT / ".venv")  # main.sh's interpreter, not a new venv
    state = tmp_path / "state"
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_PORT": str(port),
           "BARRIERNET_STATE_DIR": str(state)}
    env.pop("PREFECT_API_URL", None)
    params = load_params(workspace / "params.yaml", OVERRIDES)
    cells = [f"{c['algo']}-s{c['seed']}" for c in STAGES["train"].cells(params)]

    # 1. main.sh; SIGKILL the server once a training cell has finished (the others are training
    #    or waiting for a Dask worker).
    first = _main_sh(workspace, env, tmp_path / "main-1.log")
    server_cmd = f"server start --host 127.0.0.1 --port {port}"
    finished_before: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and first.poll() is None:
            dirs = _run_dirs(workspace)
            done = [c for c in cells if dirs and (dirs[0] / f"results/train/{c}/summary.json").exists()]
            if done:
                for cell in done:
                    (checkpoint,) = state.glob(f"{cell}-*/checkpoint.pt")
                    finished_before[cell] = checkpoint.stat().st_mtime_ns
                (server_pid,) = _processes_mentioning(server_cmd)
                os.kill(server_pid, signal.SIGKILL)
                break
            time.sleep(0.2)
        assert finished_before, (tmp_path / "main-1.log").read_text()[-3000:]
        assert len(finished_before) < len(cells), "every cell finished before the kill: raise train.total_steps"
        first.wait(120)
    finally:
        _stop(first)
    out1 = (tmp_path / "main-1.log").read_text()
    print(f"first main.sh: {time.monotonic() - started:.1f} s, finished before the kill: {sorted(finished_before)}")
    assert first.returncode == 75, out1[-3000:]
    assert "SERVER LOST" in out1 and "bash scripts/main.sh --param" in out1, out1[-3000:]
    # Nothing of the first run is left running: server, serve, flow run, Dask workers.
    assert not _processes_mentioning(str(workspace)), _processes_mentioning(str(workspace))
    # Its lock file still names it, but nobody holds the lock: it does not block the next run.
    (first_dir,) = _run_dirs(workspace)
    assert lock_holder(first_dir) is None
    assert stale_record(first_dir)["flow_run"] == first_dir.name

    # 2. The recovery: the same command again.
    second = _main_sh(workspace, env, tmp_path / "main-2.log")
    try:
        second.wait(600)
    finally:
        _stop(second)
    out2 = (tmp_path / "main-2.log").read_text()
    print(f"after the second main.sh: {time.monotonic() - started:.1f} s")
    assert second.returncode == 0, out2[-3000:]
    serve_log = (tmp_path / "prefect/logs/serve.log").read_text()
    assert f"marked flow run '{first_dir.name}' Crashed" in serve_log, serve_log[-3000:]
    (second_dir,) = [d for d in _run_dirs(workspace) if d != first_dir]
    assert (second_dir / "reports/decision_report.md").exists()
    assert lock_path(second_dir).read_text() == ""  # released by a clean end
    for cell in cells:
        summary = json.loads((second_dir / f"results/train/{cell}/summary.json").read_text())
        assert summary["updates"] == params.train.num_updates, summary
        if cell in finished_before:  # not retrained: resumed at its last update, checkpoint untouched
            assert summary["resumed_from_update"] == params.train.num_updates, (cell, summary)
            (checkpoint,) = state.glob(f"{cell}-*/checkpoint.pt")
            assert checkpoint.stat().st_mtime_ns == finished_before[cell], cell

    # 3. The same numbers as an undisturbed run: the same cells from scratch, in this process.
    reference = tmp_path / "reference"
    monkeypatch.setenv("BARRIERNET_STATE_DIR", str(tmp_path / "reference-state"))
    for cell in STAGES["train"].cells(params):
        summary = STAGES["train"].run(params, reference, **cell)
        assert summary["resumed_from_update"] is None
        STAGES["evaluate"].run(params, reference, **cell)
    STAGES["compare"].run(params, reference)
    metrics = "results/compare/metrics.json"
    assert (second_dir / metrics).read_bytes() == (reference / metrics).read_bytes()
    print(f"whole test: {time.monotonic() - started:.1f} s")


def test_lock_holder_tells_a_live_owner_from_a_dead_one(tmp_path):
    """A live owner blocks (and lock_holder names it); once it is killed, its record stays behind
    but blocks nobody, and the probes never take the lock themselves."""
    from flows.lock import WorkspaceBusyError, workspace_lock

    assert lock_holder(tmp_path) is None and stale_record(tmp_path) is None  # no lock file yet
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import time; from flows.lock import workspace_lock\n"
         f"with workspace_lock({str(tmp_path)!r}, flow_run='first'):\n"
         "    print('locked', flush=True); time.sleep(60)"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert lock_holder(tmp_path)["pid"] == holder.pid and stale_record(tmp_path) is None
        with pytest.raises(WorkspaceBusyError, match=rf"pid {holder.pid} .*flow run 'first'"):
            with workspace_lock(tmp_path):
                pass
        assert lock_holder(tmp_path)["pid"] == holder.pid  # the probes did not disturb it
    finally:
        holder.kill()
        holder.wait()
    assert lock_holder(tmp_path) is None
    assert stale_record(tmp_path)["flow_run"] == "first"
    with workspace_lock(tmp_path, flow_run="second"):
        assert lock_holder(tmp_path)["flow_run"] == "second"
    assert stale_record(tmp_path) is None  # a clean end leaves no record
