"""Command line: `python -m tasks <stage> [--params FILE] [--set key=value ...] [--algo A --seed S]`.

Also `python -m tasks tune` (the equal-effort tuning study, tasks/tuning.py), `python -m tasks list`,
`python -m tasks warm-kernels` (compile the numba loops into their on-disk cache, model/kernel_cache.py),
`python -m tasks dvc-yaml [--check]` (regenerate dvc.yaml from the stage registry, or fail when the
committed one has drifted) and `python -m tasks numerics-env
[pinned|native]` (the environment words of the pinned numerics, for processes started by hand:
`env $(python -m tasks numerics-env) dask worker ...`).

The numerics mode (params `numerics.mode`, tasks/numerics.py) is applied first, before torch loads.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tasks import numerics

if __name__ == "__main__":  # before torch, numpy and numba load (tasks.params imports env, which loads torch)
    if sys.argv[1:2] == ["numerics-env"]:
        print(numerics.shell_exports(sys.argv[2] if len(sys.argv) > 2 else numerics.mode_from_params_file()))
        sys.exit(0)
    try:
        numerics.apply(numerics.mode_from_argv(sys.argv[1:]))
    except numerics.NumericsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)

from tasks.params import ParamsError, load_params  # noqa: E402
from tasks.registry import STAGES, dvc_yaml, iter_stages  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
DVC_YAML_HEADER = "# Generated from tasks/registry.py by `python -m tasks dvc-yaml`; do not edit by hand.\n"


def render_dvc_yaml() -> str:
    from tasks._yaml import dump_yaml

    return DVC_YAML_HEADER + dump_yaml(dvc_yaml())


def _dvc_yaml_command(args: argparse.Namespace) -> int:
    path = Path(args.path)
    text = render_dvc_yaml()
    if args.check:
        current = path.read_text() if path.exists() else ""
        if current != text:
            print(f"{path} differs from the stage registry; run `python -m tasks dvc-yaml`", file=sys.stderr)
            return 1
        print(f"{path} matches the stage registry")
        return 0
    from tasks.io import write_text

    write_text(path, text)
    print(f"wrote {path}")
    return 0


def _tune_command(args: argparse.Namespace) -> int:
    from tasks import tuning

    try:  # validate everything, every cell included, before any work starts
        params = load_params(args.params, args.overrides)
        numerics.require(params.numerics.mode)
        tuning.plan(params)
    except (ParamsError, numerics.NumericsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.report_only:
        print(f"wrote {tuning.render_report(params, args.workdir)}")
        return 0
    choice = tuning.run(params, args.workdir)
    print(f"tuning study done ({choice['provenance']['wall_seconds'] / 60:.1f} min); commit these settings in "
          f"params.yaml:\n{tuning.params_snippet(choice)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list the stages")
    gen = sub.add_parser("dvc-yaml", help="generate dvc.yaml from the stage registry")
    gen.add_argument("--check", action="store_true", help="fail if the file differs instead of writing it")
    gen.add_argument("--path", default=str(REPO_ROOT / "dvc.yaml"))
    sub.add_parser("warm-kernels", help="compile the model's numba loops into their on-disk cache (model/kernel_cache.py)")
    tune = sub.add_parser("tune", help="the equal-effort tuning study (params section tuning; tasks/tuning.py)")
    tune.add_argument("--params", default=None, help="params file (default: the repo's params.yaml)")
    tune.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    tune.add_argument("--workdir", default=".", help="root under which results/tuning, reports/ and runs/ are written")
    tune.add_argument("--report-only", action="store_true", help="re-render reports/tuning/ from results/tuning")
    for stage in iter_stages():
        p = sub.add_parser(stage.name, help=stage.help)
        p.add_argument("--params", default=None, help="params file (default: the repo's params.yaml)")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a param, YAML-typed (repeatable), e.g. --set train.seeds=[0,1]")
        p.add_argument("--workdir", default=".", help="root under which results/ and reports/ are written")
        for axis, _ in stage.matrix:
            kind = int if axis == "seed" else str
            p.add_argument(f"--{axis}", type=kind, default=None,
                           help=f"run one matrix cell (default: every {axis} in params)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    if args.command == "list":
        for stage in iter_stages():
            axes = f" [matrix: {', '.join(a for a, _ in stage.matrix)}]" if stage.matrix else ""
            print(f"{stage.name:14s} {stage.help}{axes}")
        return 0
    if args.command == "dvc-yaml":
        return _dvc_yaml_command(args)

    if args.command == "tune":
        return _tune_command(args)
    if args.command == "warm-kernels":
        from model.kernel_cache import warm

        seconds = warm()
        print("warm-kernels: " + ", ".join(f"{part} {s:.1f} s" for part, s in seconds.items()))
        return 0

    stage = STAGES[args.command]
    try:  # validate everything before any work starts
        params = load_params(args.params, args.overrides)
        numerics.require(params.numerics.mode)
    except (ParamsError, numerics.NumericsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cells = stage.cells(params)
    chosen = {axis: getattr(args, axis) for axis, _ in stage.matrix if getattr(args, axis) is not None}
    if chosen:
        cells = [c for c in cells if all(c[k] == v for k, v in chosen.items())]
        if not cells:
            allowed = {axis: sorted({c[axis] for c in stage.cells(params)}) for axis in chosen}
            print(f"error: {chosen} is not a cell of stage {stage.name}; accepted values: {allowed}", file=sys.stderr)
            return 2
    for cell in cells:
        result = stage.run(params, args.workdir, **cell)
        label = " ".join(f"{k}={v}" for k, v in cell.items())
        print(f"{stage.name} {label} done: {json.dumps(result, default=str)[:500]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
