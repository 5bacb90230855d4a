"""Serve the deployment `train-and-eval/local` from the repo root (Ctrl-C stops it).

    PREFECT_API_URL=http://127.0.0.1:4200/api python flows/serve.py

then, from another shell: `prefect deployment run train-and-eval/local --watch`
(optionally `--param overrides='{"train.total_steps": 20000}'`). `scripts/main.sh` does all of
this, server included. The alternative with a work pool and a process worker is `prefect.yaml`.

Flow runs start in the directory this process was started from, so it changes to the repo root
first. The deployment's entrypoint is the module path `flows.train_and_eval.train_and_eval`, so
Dask workers can import the tasks by name.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENT_NAME = "local"


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

    from prefect.types.entrypoint import EntrypointType

    from flows.train_and_eval import train_and_eval

    print(f"serving train-and-eval/{DEPLOYMENT_NAME} from {REPO_ROOT} (API {url})", flush=True)
    train_and_eval.serve(
        name=DEPLOYMENT_NAME,
        entrypoint_type=EntrypointType.MODULE_PATH,
        description="QP benchmark -> training (algo x seed on Dask) -> evaluation -> comparison -> decision report",
        tags=["barriernet"],
        print_starting_message=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
