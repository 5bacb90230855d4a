"""Serve the deployments `train-and-eval/local` and `study/local` from the repo root (Ctrl-C stops it).

    PREFECT_API_URL=http://127.0.0.1:4200/api python flows/serve.py

then, from another shell: `prefect deployment run train-and-eval/local --watch`
(optionally `--param overrides='{"train.total_steps": 20000}'`: a DVC experiment named after the
flow run), or a study: `prefect deployment run study/local --param grid='{"env.num_obstacles": [2, 4]}' --watch`.
`scripts/main.sh` does the first, server included. The alternative with a work pool and a process
worker is `prefect.yaml`.

Flow runs start in the directory this process was started from, so it changes to the repo root
first. The deployments' entrypoints are the module paths `flows.train_and_eval.train_and_eval` and
`flows.study.study`, so Dask workers can import the tasks by name.

At start it marks Crashed the runs of these deployments that the server still shows Running but whose
process is gone (`mark_orphaned_runs`: what a run looks like after the server died under it).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENT_NAME = "local"
RUNNER_POLL_SECONDS = 1.0
"""How often serve asks the server for flow runs to start. Prefect's default, 10 s, left a run
created by `prefect deployment run` (scripts/main.sh) waiting up to that long before it started;
one small query a second to a server on loopback costs nothing."""


def mark_orphaned_runs() -> list[str]:
    """Mark Crashed the flow runs of this deployment that the server still shows Running but whose
    process is gone: their workspace lock (flows/lock.py) names them and no live process holds it.

    That is what a flow run looks like after the Prefect server died under it: the run was stopped
    (scripts/main.sh stops it) but could not report its end. A run whose lock is held, or that
    never took one, is left alone. A study is judged by the lock of its first grid point's
    checkout (every point's lock names the study's flow run). Returns one line per run marked.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter, DeploymentFilterName, FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    from flows.experiments import experiment_dir, valid_name
    from flows.lock import stale_record
    from flows.pipeline import resolve_workdir

    marked = []
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["train-and-eval", "study"])),
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[DEPLOYMENT_NAME])),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))),
        )
        for run in runs:
            params = run.parameters or {}
            workspace = Path(params.get("workspace") or REPO_ROOT).resolve()
            name = re.sub(r"[^A-Za-z0-9._-]+", "-", str(run.name))
            if params.get("grid") is not None:  # a study: its first grid point's checkout
                workdir = experiment_dir(workspace, f"{valid_name(params.get('name') or name)}-1")
            else:
                workdir = resolve_workdir(workspace, params.get("overrides"), name)
            record = stale_record(workdir)
            if not record or record.get("flow_run") != name:
                continue
            message = (f"its process (pid {record.get('pid')}) ended without reporting, e.g. after the Prefect "
                       f"server was lost mid-run; workspace lock {workdir / '.cache/pipeline.lock'} is free")
            client.set_flow_run_state(run.id, Crashed(message=message), force=True)
            marked.append(f"marked flow run '{run.name}' Crashed: {message}")
    return marked


def main() -> int:
    os.chdir(REPO_ROOT)
    if str(REPO_ROOT) not in sys.path:  # `python flows/serve.py` puts flows/ on the path, not the root
        sys.path.insert(0, str(REPO_ROOT))
    from tasks import numerics

    # First, before torch loads: flow runs (subprocesses) and their local Dask workers inherit this
    # environment. The mode is params.yaml's; a run whose overrides ask for the other mode is refused
    # with a message (start serve with BARRIERNET_NUMERICS_MODE=native for native runs).
    numerics.apply(os.environ.get("BARRIERNET_NUMERICS_MODE") or numerics.mode_from_params_file())
    from flows.server import PrefectServerUnreachable, check_api

    try:  # before importing the flow: a clear message instead of a connection traceback
        url = check_api()
    except PrefectServerUnreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from prefect import serve
    from prefect.types.entrypoint import EntrypointType

    from flows.study import study
    from flows.train_and_eval import train_and_eval

    try:  # bookkeeping only: never stands in the way of serving
        for line in mark_orphaned_runs():
            print(line, flush=True)
    except Exception as exc:  # pragma: no cover - API hiccup
        print(f"warning: could not look for flow runs orphaned by a lost Prefect server: {exc}", file=sys.stderr)

    print(f"serving train-and-eval/{DEPLOYMENT_NAME} and study/{DEPLOYMENT_NAME} from {REPO_ROOT} (API {url})",
          flush=True)
    serve(
        train_and_eval.to_deployment(
            name=DEPLOYMENT_NAME,
            entrypoint_type=EntrypointType.MODULE_PATH,
            description="QP benchmark -> training (algo x seed on Dask) -> evaluation -> comparison -> decision "
                        "report; with overrides, a DVC experiment named after the flow run",
            tags=["barriernet"],
        ),
        study.to_deployment(
            name=DEPLOYMENT_NAME,
            entrypoint_type=EntrypointType.MODULE_PATH,
            description="a grid of overrides: every grid point a DVC experiment, training cells of the whole grid "
                        "on one Dask runner, then reports/studies/<study>.md",
            tags=["barriernet"],
        ),
        print_starting_message=True,
        query_seconds=RUNNER_POLL_SECONDS,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
