"""Entrypoint of the Prefect flow `train-and-eval` (the code is in flows/pipeline.py).

Deployments point here (`flows/train_and_eval.py:train_and_eval` or the module path
`flows.train_and_eval.train_and_eval`). Run it once without a deployment:

    python -m flows.train_and_eval [--set key=value ...] [--workspace DIR]

With no `--set` it writes the tracked outputs and records them with `dvc commit`; with `--set`
the run is a DVC experiment named after the flow run, written in runs/<flow-run-name>/ (a git
worktree, flows/experiments.py). Without PREFECT_API_URL Prefect starts a temporary local
server for the run; with it set, the server must answer (a clear error otherwise).
"""

from __future__ import annotations

import argparse
import os
import sys

if __name__ == "__main__":  # pin the numerics before flows.pipeline loads torch
    from tasks import numerics

    _workspace = next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--workspace"), None)
    numerics.apply(numerics.mode_from_argv(sys.argv[1:], os.path.join(_workspace, "params.yaml") if _workspace else None))

from flows.pipeline import matrix_flow, matrix_task_runner, train_and_eval  # noqa: F401  (re-exported)

__all__ = ["train_and_eval", "matrix_flow", "matrix_task_runner"]


def main(argv: list[str] | None = None) -> int:
    from pathlib import Path

    from flows.pipeline import REPO_ROOT
    from flows.server import PrefectServerUnreachable, check_api
    from tasks.params import ParamsError, load_params, parse_override

    parser = argparse.ArgumentParser(prog="python -m flows.train_and_eval", description=__doc__.splitlines()[0])
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param, YAML-typed (repeatable); the run is then a DVC experiment")
    parser.add_argument("--workspace", default=None, help="DVC workspace with params.yaml (default: this repo)")
    args = parser.parse_args(argv)
    try:
        overrides = dict(parse_override(text) for text in args.overrides)
        # The flow validates too; doing it here first spares starting Prefect for a typo.
        load_params(Path(args.workspace or REPO_ROOT) / "params.yaml", overrides)
        if os.environ.get("PREFECT_API_URL"):
            check_api()
    except (ParamsError, PrefectServerUnreachable) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = train_and_eval(overrides=overrides or None, workspace=args.workspace)
    print(f"report: {result['report']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
