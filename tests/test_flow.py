"""The Prefect flow `train-and-eval`: ordering, artifacts, overrides, retries, OOM fallback, lock.

Fast tests replace the stage functions with tiny fakes (same signature, same output paths, from
the registry) and run the matrix on threads; the `slow` tests run the real stages with tiny
budgets in a temporary copy of the repo, the first of them on a real local Dask cluster.
"""

from __future__ import annotations

import contextvars
import dataclasses
import json
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

from prefect.task_runners import ThreadPoolTaskRunner

import flows.pipeline as pipeline
from flows.lock import WorkspaceBusyError, lock_path, workspace_lock
from flows.server import PrefectServerUnreachable, check_api
from tests.helpers import REPO_ROOT, TINY_PIPELINE, make_workspace, run_dvc
from tasks.params import ParamsError, load_params
from tasks.registry import STAGES, Stage
from tasks.train import TrainingOOMError


# Tiny budgets: 2 updates of 8 envs x 16 steps per cell, 4 short evaluation episodes.
TINY = {
    **TINY_PIPELINE,
    "train.seeds": [0, 1],
    "orchestration.retry_delay_seconds": 0,
    "orchestration.dask_workers": 2,
    "gpu.min_minibatch": 16,
}


# ---------------------------------------------------------------------------------------------
# Fixtures and helpers


def _stage_outputs(workspace: Path) -> list[Path]:
    """What the stages wrote under results/ (the tuning study's committed choice is an input)."""
    results = workspace / "results"
    return [p for p in results.iterdir() if p.name != "tuning"] if results.exists() else []


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    """Training resume state in a tmp dir (inherited by Dask worker processes)."""
    path = tmp_path / "train-state"
    monkeypatch.setenv("BARRIERNET_STATE_DIR", str(path))
    return path


def use_threads(monkeypatch, max_workers: int = 4) -> list:
    """Run the matrix on a thread pool (fakes live in this test module, not importable by Dask
    workers); returns the list of orchestration params the runner was chosen from.

    Real training needs max_workers=1 here: torch's RNG is global to a process, so two trainings
    in threads of one process would draw from each other's stream (Dask workers are processes
    with one thread each for this reason)."""
    chosen = []

    def runner(orchestration):
        chosen.append(orchestration)
        return ThreadPoolTaskRunner(max_workers=max_workers)

    monkeypatch.setattr(pipeline, "matrix_task_runner", runner)
    return chosen


def read_artifacts(keys: list[str], flow_run_id) -> list:
    """The artifacts with these keys that one flow run and its subflows (the matrix) wrote: the
    session's server is shared by every test and xdist worker, and other runs write the same keys."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey, FlowRunFilter, FlowRunFilterParentFlowRunId,
    )

    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])))
        runs = [flow_run_id, *(run.id for run in children)]
        return client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=keys), flow_run_id=ArtifactFilterFlowRunId(any_=runs)))


# -- fake stages: same signature and output paths as the real ones -----------------------------

CALLS: list[tuple] = []
CALLS_LOCK = threading.Lock()
FAKE_BEHAVIOUR: dict = {}


def _record(name: str, **cell) -> None:
    with CALLS_LOCK:
        CALLS.append((name, cell, time.monotonic()))


def _touch_outputs(stage_name: str, workdir: Path, cell: dict) -> None:
    stage = STAGES[stage_name]
    for rel in stage.paths("outs", cell) + stage.paths("metrics", cell) + stage.paths("plots", cell):
        path = Path(workdir) / rel
        if Path(rel).suffix:  # a file
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"stage": stage_name, **cell}) + "\n")
        else:  # a directory output
            path.mkdir(parents=True, exist_ok=True)
            (path / "data.json").write_text(json.dumps(cell) + "\n")


def fake_qp_benchmark(params, workdir, **cell):
    _record("qp_benchmark")
    gate = FAKE_BEHAVIOUR.get("qp_gate")
    if gate is not None:
        FAKE_BEHAVIOUR["qp_started"].set()
        assert gate.wait(120), "test gate never opened"
    _touch_outputs("qp_benchmark", workdir, {})
    return {"fake": True}


def fake_train(params, workdir, algo, seed, minibatch_size=None, progress_callback=None):
    _record("train", algo=algo, seed=seed, minibatch_size=minibatch_size)
    used = minibatch_size or params.train.minibatch_size
    if FAKE_BEHAVIOUR.get("oom_above") and used > FAKE_BEHAVIOUR["oom_above"]:
        raise TrainingOOMError(f"fake CUDA out of memory with minibatch {used}", used)
    if FAKE_BEHAVIOUR.get("fail_once") and (algo, seed) not in FAKE_BEHAVIOUR["failed"]:
        FAKE_BEHAVIOUR["failed"].add((algo, seed))
        raise RuntimeError(f"fake transient failure in {algo}-s{seed}")
    for update in range(1, 5):
        if progress_callback is not None:
            progress_callback(update / 4)
    _touch_outputs("train", workdir, {"algo": algo, "seed": seed})
    summary = {"algo": algo, "seed": seed, "minibatch_size": used,
               "minibatch_fallback": minibatch_size is not None and minibatch_size != params.train.minibatch_size}
    (Path(workdir) / STAGES["train"].paths("outs", {"algo": algo, "seed": seed})[1]).write_text(json.dumps(summary))
    _record("trained", algo=algo, seed=seed)  # when the cell's training returned
    return summary


def fake_evaluate(params, workdir, algo, seed):
    _record("evaluate", algo=algo, seed=seed)
    _touch_outputs("evaluate", workdir, {"algo": algo, "seed": seed})
    return {"algo": algo, "seed": seed}


def fake_compare(params, workdir):
    _record("compare")
    _touch_outputs("compare", workdir, {})
    (Path(workdir) / "results/compare/summary.csv").write_text("arm,seed,capture_rate\nbaseline,all,0.5\nbarriernet,all,0.25\n")
    return {"verdict": "fake"}


def fake_headline(params, workdir):
    _record("headline")
    _touch_outputs("headline", workdir, {})
    return {"verdict_code": 0}


def fake_report(params, workdir):
    _record("report")
    _touch_outputs("report", workdir, {})
    (Path(workdir) / "reports/decision_report.md").write_text("# Decision report (fake)\n")
    return {"report": "reports/decision_report.md"}


def _generic_fake(stage_name: str):
    def fake(params, workdir, **cell):
        _record(stage_name, **cell)
        _touch_outputs(stage_name, workdir, cell)
        return {"stage": stage_name, **cell}

    return fake


@dataclasses.dataclass(frozen=True)
class _StandIn(Stage):
    """A registry entry whose function is a test's stand-in but whose code deps stay the real
    stage's (the import closure of a test module is not repo code: tasks/code_deps.py refuses it)."""

    real_code: tuple[str, ...] = ()

    @property
    def code(self) -> tuple[str, ...]:
        return self.real_code


def stand_in(stage: Stage, target: str) -> Stage:
    """`stage` running `target` ("module:function") instead, same paths, params and code deps."""
    fields = {f.name: getattr(stage, f.name) for f in dataclasses.fields(stage) if f.name != "real_code"}
    return _StandIn(**{**fields, "target": target}, real_code=stage.code)


def install_fakes(monkeypatch) -> None:
    """Point every registry entry at its fake in this module (a generic one for a stage added
    since these fakes were written)."""
    for name in STAGES:
        if f"fake_{name}" not in globals():
            monkeypatch.setitem(globals(), f"fake_{name}", _generic_fake(name))
        monkeypatch.setitem(STAGES, name, stand_in(STAGES[name], f"{__name__}:fake_{name}"))


def faked_workspace(monkeypatch, tmp_path: Path, params: dict) -> Path:
    """The fake stages on threads, the call log cleared, and a committed workspace with `params`
    (dotted keys) for a flow run of the fakes (tests/test_experiments.py, tests/test_dvc_remote.py)."""
    install_fakes(monkeypatch)
    CALLS.clear()
    FAKE_BEHAVIOUR.clear()
    use_threads(monkeypatch)
    return make_workspace(tmp_path / "ws", params)


@pytest.fixture
def fake_stages(monkeypatch, tmp_path):
    """Registry entries pointing at the fakes above; a workspace with placeholder stage code for
    stages whose module has not landed yet (DVC hashes code deps)."""
    install_fakes(monkeypatch)
    CALLS.clear()
    FAKE_BEHAVIOUR.clear()
    workspace = make_workspace(tmp_path / "ws", {"train.seeds": [0, 1], "orchestration.retry_delay_seconds": 0})
    for stage in STAGES.values():
        for code in stage.code:
            if not (workspace / code).exists():
                (workspace / code).write_text("# placeholder for a stage module not written yet\n")
    return workspace


# ---------------------------------------------------------------------------------------------
# Fast tests (fake stages, thread runner)


def test_bad_override_fails_before_any_work(prefect_server, fake_stages, monkeypatch):
    use_threads(monkeypatch)
    with pytest.raises(ParamsError, match=r"unknown key 'train\.seed'; did you mean 'train\.seeds'"):
        pipeline.train_and_eval(overrides={"train.seed": [0]}, workspace=str(fake_stages))
    with pytest.raises(ParamsError, match=r"train\.total_steps"):
        pipeline.train_and_eval(overrides={"train.total_steps": -5}, workspace=str(fake_stages))
    assert CALLS == []
    assert not (fake_stages / "runs").exists() and not _stage_outputs(fake_stages)


def test_default_run_orders_stages_records_artifacts_and_commits_to_dvc(prefect_server, fake_stages, monkeypatch):
    chosen = use_threads(monkeypatch)
    state = pipeline.train_and_eval(workspace=str(fake_stages), return_state=True)
    result = state.result()

    params = load_params(fake_stages / "params.yaml")
    cells = STAGES["train"].cells(params)
    assert len(cells) == 2 * len(params.train.algos) and chosen == [params.orchestration]  # seeds [0, 1]
    names = [c[0] for c in CALLS]
    # the QP benchmark runs beside the matrix (on the same task runner), once, before compare
    assert names.count("qp_benchmark") == 1 and names.index("qp_benchmark") < names.index("compare")
    assert names[-3:] == ["compare", "headline", "report"]
    assert sorted((c[1]["algo"], c[1]["seed"]) for c in CALLS if c[0] == "train") == sorted(
        (c["algo"], c["seed"]) for c in cells)
    done, evaluated = {}, []
    for name, cell, when in CALLS:  # each cell is evaluated after its own training returned
        key = (cell.get("algo"), cell.get("seed"))
        if name == "trained":
            done[key] = when
        if name == "evaluate":
            assert key in done and done[key] <= when, key
            evaluated.append(key)
    assert sorted(evaluated) == sorted((c["algo"], c["seed"]) for c in cells)
    assert result["workdir"] == str(fake_stages) and Path(result["report"]).exists()

    # Artifacts: the report (markdown), the summary table, one progress artifact per cell at 100 %.
    by_key = {}
    for artifact in read_artifacts(["decision-report", "results-summary"] +
                                   [pipeline._artifact_key(f"train-{c['algo']}-s{c['seed']}") for c in cells],
                                   state.state_details.flow_run_id):
        by_key.setdefault(artifact.key, []).append(artifact)
    assert by_key["decision-report"][-1].type == "markdown"
    assert "Decision report (fake)" in by_key["decision-report"][-1].data
    table = by_key["results-summary"][-1]
    assert table.type == "table" and "barriernet" in str(table.data)
    for cell in cells:
        progress = by_key[pipeline._artifact_key(f"train-{cell['algo']}-s{cell['seed']}")]  # cbf_beta -> cbf-beta
        assert progress[-1].type == "progress" and any(float(a.data) == 100.0 for a in progress)

    # Recorded by DVC: `dvc status` is clean (checked by DVC itself, not by the flow's report).
    assert result["dvc_status"] == {}
    status = run_dvc(fake_stages, "status")
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr
    assert (fake_stages / "dvc.lock").exists()


def test_overrides_write_to_run_dir_and_leave_tracked_outputs_alone(prefect_server, fake_stages, monkeypatch):
    use_threads(monkeypatch)
    result = pipeline.train_and_eval(overrides={"train.seeds": [3]}, workspace=str(fake_stages))
    workdir = Path(result["workdir"])
    assert workdir.parent == fake_stages / "runs"
    assert (workdir / "reports/decision_report.md").exists()
    assert (workdir / "results/train/barriernet-s3/model.pt").exists()
    assert json.loads((workdir / ".cache/params.json").read_text())["overrides"] == {"train.seeds": [3]}
    assert not _stage_outputs(fake_stages) and not (fake_stages / "reports/decision_report.md").exists()
    assert not (fake_stages / "dvc.lock").exists() and result["dvc_status"] is None


def test_transient_failure_is_retried_by_prefect(prefect_server, fake_stages, monkeypatch):
    use_threads(monkeypatch)
    FAKE_BEHAVIOUR.update(fail_once=True, failed=set())
    pipeline.train_and_eval(overrides={"train.seeds": [0]}, workspace=str(fake_stages))
    trains = [c[1] for c in CALLS if c[0] == "train"]
    algos = load_params(fake_stages / "params.yaml").train.algos  # every cell fails once, then succeeds
    assert sorted((c["algo"], c["seed"]) for c in trains) == sorted([(algo, 0) for algo in algos] * 2)


def test_out_of_memory_halves_the_minibatch(prefect_server, fake_stages, monkeypatch):
    use_threads(monkeypatch)
    params = load_params(fake_stages / "params.yaml", {"gpu.min_minibatch": 16})
    planned = params.train.minibatch_size
    FAKE_BEHAVIOUR["oom_above"] = planned // 4  # needs two halvings
    result = pipeline.train_and_eval(overrides={"train.seeds": [0], "gpu.min_minibatch": 16},
                                     workspace=str(fake_stages))
    tried = [c[1]["minibatch_size"] for c in CALLS if c[0] == "train" and c[1]["algo"] == "baseline"]
    assert tried == [None, planned // 2, planned // 4]
    summary = result["cells"]["baseline-s0"]["train"]
    assert summary["minibatch_size"] == planned // 4 and summary["minibatch_fallback"] is True


def test_out_of_memory_below_min_minibatch_fails_clearly(prefect_server, fake_stages, monkeypatch):
    use_threads(monkeypatch)
    FAKE_BEHAVIOUR["oom_above"] = 1
    planned = load_params(fake_stages / "params.yaml").train.minibatch_size
    with pytest.raises(pipeline.PipelineError, match=r"gpu\.min_minibatch=%d" % planned):
        pipeline.train_and_eval(overrides={"train.seeds": [0], "gpu.min_minibatch": planned},
                                workspace=str(fake_stages))


def test_second_run_on_the_same_workspace_gets_a_clear_error(prefect_server, fake_stages, monkeypatch):
    use_threads(monkeypatch)
    FAKE_BEHAVIOUR.update(qp_gate=threading.Event(), qp_started=threading.Event())
    outcome = {}

    def first_run():
        try:
            outcome["result"] = pipeline.train_and_eval(workspace=str(fake_stages))
        except BaseException as exc:  # pragma: no cover - reported below
            outcome["error"] = exc

    # the thread runs in a copy of this context: the test server's PREFECT_API_URL is a context-local
    # setting (conftest's `temporary_settings`), which a bare thread would not see; its flow would
    # start a temporary server of its own
    thread = threading.Thread(target=contextvars.copy_context().run, args=(first_run,))
    thread.start()
    try:
        assert FAKE_BEHAVIOUR["qp_started"].wait(120), "first run never reached its first stage"
        with pytest.raises(WorkspaceBusyError, match=rf"in use by another pipeline run \(pid {os.getpid()}"):
            pipeline.train_and_eval(workspace=str(fake_stages))
    finally:
        FAKE_BEHAVIOUR["qp_gate"].set()
        thread.join(180)
    assert "error" not in outcome and Path(outcome["result"]["report"]).exists()
    assert [c[0] for c in CALLS].count("qp_benchmark") == 1  # the second run did no work


def test_lock_held_by_another_process_and_stale_lock(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from flows.lock import workspace_lock\n"
         f"with workspace_lock({str(tmp_path)!r}, flow_run='holder'):\n"
         "    print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkspaceBusyError, match=rf"pid {holder.pid} .*flow run 'holder'"):
            with workspace_lock(tmp_path):
                pass
    finally:
        holder.kill()
        holder.wait()
    # The holder died without cleaning up: its record is still there, the kernel lock is gone.
    assert json.loads(lock_path(tmp_path).read_text())["pid"] == holder.pid
    with workspace_lock(tmp_path, flow_run="next"):
        assert json.loads(lock_path(tmp_path).read_text())["pid"] == os.getpid()
    assert lock_path(tmp_path).read_text() == ""


def test_unreachable_server_names_prefect_api_url(monkeypatch):
    with pytest.raises(PrefectServerUnreachable, match=r"PREFECT_API_URL=http://127\.0\.0\.1:9/api .*prefect server start"):
        check_api("http://127.0.0.1:9/api", timeout=2)
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    served = subprocess.run([sys.executable, "flows/serve.py"], cwd=REPO_ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert served.returncode == 2
    assert "PREFECT_API_URL=http://127.0.0.1:9/api" in served.stderr and "prefect server start" in served.stderr


# ---------------------------------------------------------------------------------------------
# End to end with the real stages and tiny budgets


def _tensors_equal(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_default_run_on_local_dask_cluster_is_recorded_by_dvc(prefect_server, tmp_path, state_dir, monkeypatch):
    from prefect_dask import DaskTaskRunner

    workspace = make_workspace(tmp_path / "ws", {**TINY, "train.seeds": [0]})  # two cells, one per Dask worker
    runners = []
    real_runner = pipeline.matrix_task_runner

    def spy(orchestration):
        runners.append(real_runner(orchestration))
        return runners[-1]

    monkeypatch.setattr(pipeline, "matrix_task_runner", spy)
    started = time.monotonic()
    result = pipeline.train_and_eval(workspace=str(workspace))
    print(f"default flow run on a local Dask cluster: {time.monotonic() - started:.1f} s")

    runner = runners[0]
    assert isinstance(runner, DaskTaskRunner) and runner.cluster_kwargs["processes"] is True
    assert runner.cluster_kwargs["host"] == "127.0.0.1" and runner.cluster_kwargs["n_workers"] == 2
    assert runner.cluster_kwargs.items() >= pipeline.LOOPBACK_CLUSTER.items()
    report = Path(result["report"])
    assert report == workspace / "reports/decision_report.md" and report.read_text().strip()
    params = load_params(workspace / "params.yaml")
    for cell in STAGES["train"].cells(params):
        summary = json.loads((workspace / f"results/train/{cell['algo']}-s{cell['seed']}/summary.json").read_text())
        assert summary["total_steps"] == params.train.num_updates * params.train.batch_size
        assert (workspace / f"results/eval/{cell['algo']}-s{cell['seed']}").is_dir()

    # DVC agrees everything is recorded: clean status, and repro runs nothing and touches nothing.
    status = run_dvc(workspace, "status")
    assert status.returncode == 0 and "Data and pipelines are up to date" in status.stdout, status.stdout
    model = workspace / "results/train/barriernet-s0/model.pt"
    before = model.stat().st_mtime_ns
    repro = run_dvc(workspace, "repro")
    assert repro.returncode == 0, repro.stdout + repro.stderr
    assert "Running stage" not in repro.stdout and model.stat().st_mtime_ns == before


def _worker_malloc_trim(config: dict) -> list:
    """MALLOC_TRIM_THRESHOLD_ as a local cluster's worker processes see it, under `config`."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set(config), LocalCluster(n_workers=1, threads_per_worker=1,
                                               **pipeline.LOOPBACK_CLUSTER) as cluster:
        with Client(cluster) as client:
            return list(client.run(lambda: os.environ.get("MALLOC_TRIM_THRESHOLD_")).values())


def _http_server_of_a_local_cluster(**kwargs) -> tuple[tuple[str, int], list[str]]:
    """(host, port) the scheduler's HTTP server of a worker-less LocalCluster listened on, and the
    messages of the warnings starting it raised."""
    from distributed import LocalCluster

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with LocalCluster(n_workers=0, **kwargs) as cluster:
            server = cluster.scheduler.http_server
            bound = (server.address, server.port)
    return bound, [str(w.message) for w in caught]


@pytest.mark.timeout(120)
def test_the_flows_local_cluster_listens_on_loopback_and_leaves_a_taken_port_8787_alone():
    """The flow's cluster turns the dashboard off. Dask still starts the scheduler's HTTP server,
    on port 8787 unless told otherwise, and warns when another cluster holds that port (CI's log
    showed it whenever two tests ran a cluster at once). With 8787 held, the flow's settings give
    a loopback address on another port and no warning; the control (the dashboard turned off the
    documented way) shows the warning."""
    with socket.socket() as holder:
        try:
            holder.bind(("127.0.0.1", 8787))
            holder.listen()
        except OSError:  # held already: by another test's cluster, which is the case under test
            pass
        control, control_warnings = _http_server_of_a_local_cluster(processes=True, host="127.0.0.1",
                                                                    dashboard_address=None)
        bound, raised = _http_server_of_a_local_cluster(**pipeline.LOOPBACK_CLUSTER)
    assert any("8787 is already in use" in m for m in control_warnings), (control, control_warnings)
    assert bound[0] == "127.0.0.1" and bound[1] not in (0, 8787), bound
    assert not [m for m in raised if "already in use" in m], raised


@pytest.mark.timeout(120)
def test_the_flows_dask_workers_keep_glibc_malloc_defaults(monkeypatch):
    """Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which made a training cell
    27 % slower per CPU-second (benchmarks/parallel_efficiency.py --dask). The flow's local
    cluster unsets it, and clears the value an earlier nanny wrote into this process; a value
    the user set is left alone."""
    import dask
    import distributed  # noqa: F401  (its config defaults)

    key = "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_"
    stock = dask.config.get(key)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    # the control: Dask's stock setting (explicit: an earlier flow in this process may have changed it)
    assert _worker_malloc_trim({key: 65536}) == ["65536"]
    try:
        monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # as an earlier nanny leaves it
        pipeline.matrix_task_runner(load_params().orchestration)
        assert "MALLOC_TRIM_THRESHOLD_" not in os.environ and dask.config.get(key) is None
        assert _worker_malloc_trim({}) == [None]
        monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1048576")  # the user's own choice
        pipeline.matrix_task_runner(load_params().orchestration)
        assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "1048576"
    finally:
        dask.config.set({key: stock})


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_injected_training_fault_is_retried_and_matches_an_unfaulted_run(prefect_server, tmp_path, state_dir,
                                                                         monkeypatch):
    import torch

    from distributed import LocalCluster

    from tasks.train import run as train_run

    workspace = make_workspace(tmp_path / "ws", TINY)
    marker = tmp_path / "fault-marker"
    monkeypatch.setenv("BARRIERNET_FAULT_TRAIN_AFTER_UPDATE", "1")  # inherited by the Dask worker
    monkeypatch.setenv("BARRIERNET_FAULT_MARKER", str(marker))
    # An existing scheduler (orchestration.dask_address): one single-threaded worker process.
    with LocalCluster(n_workers=1, threads_per_worker=1, **pipeline.LOOPBACK_CLUSTER) as cluster:
        overrides = {"train.seeds": [0], "orchestration.dask_address": cluster.scheduler_address}
        result = pipeline.train_and_eval(overrides=overrides, workspace=str(workspace))
        ran_on_cluster = {prefix for prefix in cluster.scheduler.task_prefixes}
    assert any(p.startswith("train") for p in ran_on_cluster), ran_on_cluster
    assert any(p.startswith("evaluate") for p in ran_on_cluster), ran_on_cluster
    assert marker.exists()  # the fault did fire
    workdir = Path(result["workdir"])
    summaries = {name: cell["train"] for name, cell in result["cells"].items()}
    resumed = sorted(str(s["resumed_from_update"]) for s in summaries.values())
    assert resumed == ["1"] + ["None"] * (len(summaries) - 1)  # the faulted cell resumed, no other
    assert (workdir / "reports/decision_report.md").exists()

    # With overrides the run is a DVC experiment (tests/test_experiments.py has the details): applied
    # in the workspace, DVC finds everything recorded, and the metrics recomputed from the applied
    # outputs are the run's, byte for byte.
    name = result["experiment"]["experiment"]
    assert workdir == workspace / "runs" / name
    applied = run_dvc(workspace, "exp", "apply", name)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    status = run_dvc(workspace, "status")
    assert status.returncode == 0 and "Data and pipelines are up to date" in status.stdout, status.stdout
    repro = run_dvc(workspace, "repro")
    assert repro.returncode == 0 and "Running stage" not in repro.stdout, repro.stdout + repro.stderr
    for stage in ("compare", "headline"):
        forced = run_dvc(workspace, "repro", "--force", "--single-item", stage)
        assert forced.returncode == 0 and "Running stage" in forced.stdout, forced.stdout + forced.stderr
    for rel in ("results/compare/metrics.json", "results/headline.json"):
        assert (workspace / rel).read_bytes() == (workdir / rel).read_bytes(), rel

    # Unfaulted reference: same params, fresh resume state, no fault switch.
    monkeypatch.delenv("BARRIERNET_FAULT_TRAIN_AFTER_UPDATE")
    monkeypatch.setenv("BARRIERNET_STATE_DIR", str(tmp_path / "reference-state"))
    params = load_params(workspace / "params.yaml", overrides)
    for name, summary in summaries.items():
        reference = train_run(params, tmp_path / "reference", algo=summary["algo"], seed=summary["seed"])
        faulted = torch.load(workdir / f"results/train/{name}/model.pt", weights_only=False)
        clean = torch.load(tmp_path / f"reference/results/train/{name}/model.pt", weights_only=False)
        for part in ("actor", "critic", "obs_rms"):
            assert _tensors_equal(faulted[part], clean[part]), f"{name}: {part} differs after the retried run"
        for metric in ("final_capture_rate", "final_collision_rate", "final_episode_return", "total_steps"):
            assert summary[metric] == reference[metric], metric


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_out_of_memory_in_training_retries_with_half_the_minibatch(prefect_server, tmp_path, state_dir, monkeypatch):
    use_threads(monkeypatch, max_workers=1)
    workspace = make_workspace(tmp_path / "ws", TINY)
    monkeypatch.setenv("BARRIERNET_FAULT_TRAIN_AFTER_UPDATE", "1")
    monkeypatch.setenv("BARRIERNET_FAULT_MARKER", str(tmp_path / "oom-marker"))
    monkeypatch.setenv("BARRIERNET_FAULT_KIND", "oom")
    result = pipeline.train_and_eval(overrides={"train.seeds": [0]}, workspace=str(workspace))
    planned = load_params(workspace / "params.yaml").train.minibatch_size
    fallbacks = [cell["train"] for cell in result["cells"].values() if cell["train"]["minibatch_fallback"]]
    assert len(fallbacks) == 1
    assert fallbacks[0]["minibatch_size"] == planned // 2 and fallbacks[0]["resumed_from_update"] == 1
    name = f"{fallbacks[0]['algo']}-s{fallbacks[0]['seed']}"
    on_disk = json.loads((Path(result["workdir"]) / f"results/train/{name}/summary.json").read_text())
    assert on_disk["minibatch_fallback"] is True and on_disk["minibatch_size"] == planned // 2
    report = (Path(result["workdir"]) / "reports/decision_report.md").read_text().lower()
    # the report tells the reader the planned batch was not used: in its setup and in the cell's row
    assert f"minibatch fallback (out-of-memory retry with a smaller minibatch): yes, in {name}" in report
    assert f"yes: {planned // 2} instead of {planned}" in report
