"""A real Dask cluster that loses a worker (issue 19 item 4).

`dask scheduler` and two `dask worker --nthreads 1` processes are started apart from the flow
(loopback only, pinned numerics as the README says), the flow runs through
`orchestration.dask_address`, and one worker (its whole process group, as when a machine
dies) is SIGKILLed while it trains a cell, after it has finished another one. The test
shows: the flow completes; the killed cell resumes from its last checkpoint on the other
worker; no finished cell is trained again (prefect#15442, prefect-dask#101: a result held by a
dead worker is recomputed if something still wants it); results/compare/metrics.json is
byte-identical to an undisturbed run of the same params.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from prefect.task_runners import ThreadPoolTaskRunner

import flows.pipeline as pipeline
from tests.helpers import REPO_ROOT, TINY_PIPELINE, make_workspace
from tasks.registry import STAGES
from tests.test_flow import stand_in

BIN = Path(sys.executable).parent
# Six updates per cell (8 envs x 16 steps each), a checkpoint after every update: a cell trains
# for several seconds on a loaded 2-core machine, a window wide enough to kill it mid-way.
PARAMS = {
    **TINY_PIPELINE,
    # four cells on two workers: a worker must start a second cell for the kill
    "train.algos": ["barriernet", "baseline", "cbf_beta", "shielded"],
    "train.seeds": [0],
    # 18 updates of 8 envs x 16 steps, a checkpoint after each: the watcher (polling every 50 ms)
    # must see the second cell between its first checkpoint and its summary; with 6 updates that
    # window was about 0.1 s and a loaded machine missed it once in a dozen runs
    "train.total_steps": 18 * 8 * 16,
    "train.checkpoint_every": 1,
    "orchestration.retry_delay_seconds": 0,
    "gpu.min_minibatch": 16,
    # One arm per trained algorithm, no filter sweep: the cluster is under test, not the arms.
    "eval.arms": ["barriernet", "baseline", "cbf_beta", "shielded"],
    "eval.filter_sweep.enabled": False,
}


def skip_stage(params, workdir, **cell) -> dict:
    """Stands in for the QP benchmark (minutes of JIT compilation on a loaded 2-core machine) and
    the report: both run in the flow's own process, after or apart from the matrix under test,
    and neither feeds results/compare/metrics.json (test_pipeline_e2e covers them)."""
    return {"skipped": True}


def _skip(monkeypatch, *names: str) -> None:
    for name in names:
        monkeypatch.setitem(STAGES, name, stand_in(STAGES[name], f"{__name__}:skip_stage"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _numerics_env() -> dict[str, str]:
    """What `python -m tasks numerics-env` prints (KEY=VALUE ...): the pinned-numerics variables."""
    out = subprocess.run([sys.executable, "-m", "tasks", "numerics-env"], cwd=REPO_ROOT, capture_output=True,
                         text=True, check=True).stdout
    return dict(item.split("=", 1) for item in out.split())


class Cluster:
    """A scheduler and workers, each in its own process group (a kill takes the whole worker)."""

    def __init__(self, logs: Path, env: dict[str, str]):
        self.logs, self.env = logs, env
        self.procs: dict[str, subprocess.Popen] = {}
        self.address = f"tcp://127.0.0.1:{_free_port()}"

    def _start(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")
        proc = subprocess.Popen([str(BIN / "dask"), *args], cwd=REPO_ROOT, env=self.env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start(self, workers: int) -> None:
        port = self.address.rsplit(":", 1)[1]
        self._start("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"])
        for i in range(workers):
            # --no-nanny as the README starts workers (the nanny's MALLOC_TRIM_THRESHOLD_ slows training)
            self._start(f"worker{i}", ["worker", self.address, "--nthreads", "1", "--no-nanny", "--host", "127.0.0.1",
                                       "--no-dashboard", "--name", f"worker{i}",
                                       "--local-directory", str(self.logs / f"worker{i}-scratch")])
        from distributed import Client

        with Client(self.address, timeout=120) as client:
            client.wait_for_workers(workers, timeout=180)

    def group_of(self, pid: int) -> str | None:
        """Which started process group `pid` belongs to."""
        try:
            pgid = os.getpgid(pid)
        except ProcessLookupError:
            return None
        return next((name for name, proc in self.procs.items() if proc.pid == pgid), None)

    def kill(self, name: str) -> None:
        try:
            os.killpg(self.procs[name].pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def stop(self) -> None:
        for name in reversed(list(self.procs)):
            self.kill(name)
        for proc in self.procs.values():
            proc.wait(timeout=30)


def _kill_a_worker_mid_training(cluster: Cluster, calls_log: Path, state_dir: Path, workspace: Path,
                                stop: threading.Event, killed: dict) -> None:
    """Watch the train-call log; SIGKILL the worker that runs its second cell once that cell has a
    checkpoint on disk and no summary yet (its first cell finished on it: its result lived there)."""
    while not stop.is_set():
        calls = pipeline.read_train_calls(calls_log)
        per_pid: dict[int, list[dict]] = {}
        for call in calls:
            per_pid.setdefault(call["pid"], []).append(call)
        for pid, mine in per_pid.items():
            if len(mine) < 2:
                continue
            cell = f"{mine[-1]['algo']}-s{mine[-1]['seed']}"
            checkpointed = any(state_dir.glob(f"{cell}-*/checkpoint.pt"))
            finished = any(workspace.glob(f"runs/*/results/train/{cell}/summary.json"))
            if checkpointed and not finished:
                name = cluster.group_of(pid)
                if name is None:
                    continue
                killed.update(cell=cell, worker=name, pid=pid, calls_before=len(calls))
                cluster.kill(name)
                return
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_worker_sigkilled_mid_training_resumes_elsewhere_without_recomputing(prefect_server, tmp_path, monkeypatch):
    _skip(monkeypatch, "qp_benchmark", "report")
    workspace = make_workspace(tmp_path / "ws", PARAMS)
    state_dir, calls_log = tmp_path / "worker-state", tmp_path / "train-calls.jsonl"
    logs = tmp_path / "logs"
    logs.mkdir()
    env = {**os.environ, **_numerics_env(), "BARRIERNET_STATE_DIR": str(state_dir),
           pipeline.TRAIN_CALLS_ENV: str(calls_log), "PYTHONPATH": str(REPO_ROOT)}
    cluster = Cluster(logs, env)
    stop, killed = threading.Event(), {}
    try:
        cluster.start(workers=2)
        killer = threading.Thread(target=_kill_a_worker_mid_training,
                                  args=(cluster, calls_log, state_dir, workspace, stop, killed), daemon=True)
        killer.start()
        started = time.monotonic()
        result = pipeline.train_and_eval(overrides={"orchestration.dask_address": cluster.address},
                                         workspace=str(workspace))
        print(f"flow on a 2-worker cluster with one worker killed: {time.monotonic() - started:.1f} s; {killed}")
        stop.set()
        killer.join(10)
        survivors = {name for name, proc in cluster.procs.items() if proc.poll() is None}
    finally:
        stop.set()
        cluster.stop()

    # The kill happened mid-training, and the flow still completed.
    assert killed, "no worker was killed (training finished before the watcher saw a checkpoint)"
    assert killed["worker"] not in survivors and "scheduler" in survivors
    workdir = Path(result["workdir"])
    assert (workdir / "results/headline.json").is_file()  # the flow went on through compare and headline

    # Train calls: the killed cell twice (its second run on the surviving worker), every other once.
    calls = pipeline.read_train_calls(calls_log)
    counts: dict[str, int] = {}
    for call in calls:
        cell = f"{call['algo']}-s{call['seed']}"
        counts[cell] = counts.get(cell, 0) + 1
    cells = {f"{algo}-s0" for algo in pipeline.load_params(workspace / "params.yaml").train.algos}
    assert set(counts) == cells
    assert counts == {cell: 2 if cell == killed["cell"] else 1 for cell in cells}, (counts, killed)
    rerun = [c for c in calls if f"{c['algo']}-s{c['seed']}" == killed["cell"]][-1]
    assert rerun["pid"] != killed["pid"]

    # ... which resumed from the checkpoint the killed run had written (update >= 1, not finished).
    summary = result["cells"][killed["cell"]]["train"]
    updates = PARAMS["train.total_steps"] // (8 * 16)  # 18: the kill came before the last
    assert summary["resumed_from_update"] is not None and 1 <= summary["resumed_from_update"] < updates, summary
    assert summary["total_steps"] == PARAMS["train.total_steps"]

    # Undisturbed reference: the same params in this process (threads, fresh resume state).
    reference_ws = make_workspace(tmp_path / "ref", PARAMS)
    monkeypatch.setenv("BARRIERNET_STATE_DIR", str(tmp_path / "reference-state"))
    monkeypatch.setattr(pipeline, "matrix_task_runner", lambda orchestration: ThreadPoolTaskRunner(max_workers=1))
    reference = pipeline.train_and_eval(overrides={"orchestration.dask_address": cluster.address},
                                        workspace=str(reference_ws))
    disturbed = (workdir / "results/compare/metrics.json").read_bytes()
    undisturbed = (Path(reference["workdir"]) / "results/compare/metrics.json").read_bytes()
    assert disturbed == undisturbed
