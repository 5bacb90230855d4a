"""Where the report's numbers come from: the machine, git commit, package versions, params
differing from params.yaml, checkpoint hashes and the commands that reproduce the report.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import shlex
import subprocess
from pathlib import Path
from typing import Any

from tasks.params import DEFAULT_PARAMS_PATH, Params, load_params, params_hash
from tasks.report.formatting import md_table
from tasks.report.inputs import Inputs

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
PACKAGES = ("torch", "qpth", "gymnasium", "prefect", "dvc", "dvclive", "numpy", "pandas", "scipy", "matplotlib")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "platform": platform.platform(),
                            "python": platform.python_version()}
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception as exc:  # torch missing or broken: the report still renders
        info["torch_threads"] = None
        info["cuda"] = None
        log.warning("torch unavailable for the hardware table: %s", exc)
    return info


def _numerics_line(params: Params) -> str:
    """The numerics mode this report and (from their summaries) the training cells ran with."""
    from tasks import numerics

    info = numerics.describe()
    line = (f"numerics.mode = {params.numerics.mode}; this process: {info['mode']}, pinned ISA {info['pinned_isa']}, "
            f"ATen {info.get('aten_capability', '?')}, MKL_CBWR {info['MKL_CBWR']}")
    if params.numerics.mode == "pinned":
        line += " (the same weights and episodes on any x86-64 CPU with AVX2: tasks/numerics.py)"
    return line


# The pipeline's tracked outputs: a run rewrites them, so they differ from the commit until the
# run is committed; they say nothing about whether the code that ran was committed.
PIPELINE_OUTPUTS = ("results/", "reports/", "dvc.lock")


def git_state(repo: Path = REPO_ROOT) -> dict[str, Any]:
    """{"commit": sha or None, "dirty": bool or None, "changed": n, "outputs": m}; "changed" counts
    changed or untracked paths outside PIPELINE_OUTPUTS ("dirty": any), "outputs" those inside;
    tolerates a missing git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                                timeout=30, check=True).stdout.strip()
        # The report's own outputs are left out: DVC deletes them before the stage runs, so they
        # always read as changed while it renders.
        own = [":!reports/decision_report.md", ":!reports/figures", ":!reports/animations"]
        status = subprocess.run(["git", "status", "--porcelain", "--", ".", *own], cwd=repo, capture_output=True,
                                text=True, timeout=60, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "changed": None, "outputs": None}
    paths = [line[3:].strip().strip('"') for line in status.splitlines() if line.strip()]
    outputs = [p for p in paths if p.startswith(PIPELINE_OUTPUTS)]
    changed = len(paths) - len(outputs)
    return {"commit": commit, "dirty": bool(changed), "changed": changed, "outputs": len(outputs)}


def package_versions() -> dict[str, str]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def default_params() -> Params:
    """The params `dvc repro` would use: params.yaml (the schema defaults if it is unreadable)."""
    try:
        return load_params(DEFAULT_PARAMS_PATH)
    except Exception:  # noqa: BLE001 - an unreadable params.yaml: compare with the schema defaults
        return Params()


def params_overrides(params: Params, reference: Params | None = None) -> dict[str, Any]:
    """Dotted key -> value where `params` differs from params.yaml."""
    ours = _flatten(params.to_dict())
    theirs = _flatten((reference or default_params()).to_dict())
    return {key: value for key, value in ours.items() if theirs.get(key, object()) != value}


def _yaml_value(value: Any) -> str:
    """A value as `--set key=value` takes it (YAML-typed; JSON is YAML)."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _assignment(key: str, value: Any) -> str:
    """`key=value`, quoted for a POSIX shell (brackets in lists would glob)."""
    return shlex.quote(f"{key}={_yaml_value(value)}")


def reproduce_commands(params: Params, workdir: Path, overrides: dict[str, Any]) -> list[str]:
    if not overrides:
        return [
            "dvc repro                      # rebuilds every stage whose inputs changed, then this report",
            "prefect deployment run train-and-eval/local   # the same through Prefect (needs `python flows/serve.py`)",
        ]
    sets = " ".join(f"--set {_assignment(key, value)}" for key, value in sorted(overrides.items()))
    where = f"--workdir {shlex.quote(str(workdir))}"
    commands = [f"python -m tasks {stage} {where} {sets}"
                for stage in ("qp_benchmark", "train", "evaluate", "compare", "report")]
    commands.append("# or through Prefect (recorded as a DVC experiment named after the flow run; its checkout is runs/<name>/):")
    commands.append("prefect deployment run train-and-eval/local --params "
                    + shlex.quote(json.dumps({"overrides": dict(sorted(overrides.items()))})))
    commands.append("# or as a DVC experiment in the workspace:")
    commands.append("dvc exp run " + " ".join(f"-S {_assignment(k, v)}" for k, v in sorted(overrides.items())))
    return commands


def _provenance_section(inputs: Inputs, params: Params, workdir: Path, hw: dict[str, Any],
                        git: dict[str, Any], overrides: dict[str, Any]) -> str:
    if git["commit"] is None:
        git_text = "not a git checkout (or git missing): commit unknown"
    else:
        git_text = f"`{git['commit']}`" + (f", DIRTY ({git['changed']} changed/untracked paths outside the "
                                           "pipeline's outputs)" if git["dirty"] else ", clean code")
        if git.get("outputs"):
            count = git["outputs"]
            git_text += (f"; {count} path{'' if count == 1 else 's'} under {', '.join(PIPELINE_OUTPUTS)} "
                         f"differ{'s' if count == 1 else ''} from the commit (this run's outputs until they are committed)")
    lines = [
        f"- git commit: {git_text}",
        f"- params hash: `{params_hash(params.to_dict())}` (sha256 of the validated params, first 16 hex digits)",
        "- params differing from params.yaml: " + (", ".join(f"`{k}={_yaml_value(v)}`" for k, v in
                                                            sorted(overrides.items())) if overrides else "none"),
        f"- device: {hw['cpu']} ({hw['cpu_count']} logical CPUs); CUDA: {hw['cuda'] or 'none'}",
        "",
        "Checkpoints (md5 of the file content, which is what DVC records in dvc.lock):",
        "",
        md_table(["checkpoint", "md5", "bytes"],
                 [[_shown_path(c.model_path, workdir), f"`{c.model_md5}`", c.model_path.stat().st_size]
                  for c in inputs.train]),
        "",
        "Packages: " + ", ".join(f"{name} {version}" for name, version in package_versions().items()),
        "",
        "Reproduce this report:",
        "",
        "```",
        *reproduce_commands(params, workdir, overrides),
        "```",
    ]
    return "\n".join(lines) + "\n"


def _shown_path(path: Path, workdir: Path) -> str:
    return str(path.relative_to(workdir)) if path.is_relative_to(workdir) else str(path)
