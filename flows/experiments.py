"""A flow run with overrides becomes a DVC experiment named after the flow run.

    runs/<name>/   a git worktree of HEAD inside the checkout (runs/ is gitignored), with the
                   workspace's uncommitted changes copied in and params.yaml rewritten with the
                   overrides; the flow's tasks write the tracked outputs there, then
                   `dvc commit -f` and `dvc exp save --name <name>` record it.

A worktree shares the checkout's git objects and refs, so the experiment (refs/exps/...) is listed
by `dvc exp show` in the checkout; its `.dvc/config.local` points DVC's cache (and every remote
with a relative url) at the checkout's, so the outputs are in the one cache and `dvc exp apply
<name>` in the checkout restores params.yaml, dvc.lock and the outputs. The worktree stays as a
view of the run (report, results) until removed: `git worktree remove --force runs/<name>` loses
nothing the experiment holds.

A workspace that is not a git repository with a commit cannot hold experiments: there the run
writes a plain `runs/<name>/` directory, as before, and says so.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

log = logging.getLogger(__name__)

RUNS_DIR = "runs"
# `dvc exp save` moves refs/exps/exec/EXEC_HEAD, which every worktree of a repo shares: saves are
# taken one at a time per repository (a kernel lock, dropped if its holder dies).
SAVE_LOCK = ".dvc/tmp/exp-save.lock"
SITE_CACHE = ".dvc/tmp/site-cache"  # the experiment checkouts' DVC site cache (core.site_cache_dir)


class ExperimentError(RuntimeError):
    """The run could not be set up or recorded as an experiment; the message says which step."""


def experiment_dir(workspace: Path, name: str) -> Path:
    """Where the run named `name` writes: ``<workspace>/runs/<name>``."""
    return Path(workspace) / RUNS_DIR / name


def valid_name(name: str) -> str:
    """`name` made a valid git ref component and DVC experiment name (letters, digits, . _ -)."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip(".-") or "run"
    return re.sub(r"\.{2,}", ".", cleaned).removesuffix(".lock")


def _git(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise ExperimentError(f"`git {' '.join(args)}` failed in {cwd} (exit {result.returncode}): "
                              f"{result.stderr.strip()[-2000:]}")
    return result


def can_hold_experiments(workspace: Path) -> bool:
    """A git work tree root with at least one commit (an experiment is a commit on top of HEAD)."""
    top = _git(workspace, "rev-parse", "--show-toplevel", check=False)
    if top.returncode != 0 or Path(top.stdout.strip()).resolve() != Path(workspace).resolve():
        return False
    return _git(workspace, "rev-parse", "--verify", "-q", "HEAD", check=False).returncode == 0


def _set_dotted(document: Any, key: str, value: Any) -> None:
    """Set `a.b.c` in a ruamel round-trip document, creating missing sections; lists of plain
    values are written in flow style, as params.yaml writes them."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    def plain(item: Any) -> Any:
        if isinstance(item, Mapping):
            node = CommentedMap()
            for k, v in item.items():
                node[k] = plain(v)
            return node
        if isinstance(item, (list, tuple)):
            node = CommentedSeq(plain(v) for v in item)
            if all(not isinstance(v, (Mapping, list, tuple)) for v in item):
                node.fa.set_flow_style()
            return node
        return item

    node = document
    parts = key.split(".")
    for part in parts[:-1]:
        if part not in node or node[part] is None:
            node[part] = CommentedMap()
        node = node[part]
    node[parts[-1]] = plain(value)


def write_params(path: Path, overrides: Mapping[str, Any]) -> None:
    """Rewrite the params file at `path` with dotted-key `overrides` set; comments and order kept."""
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.width = 100
    document = yaml.load(path.read_text()) or {}
    for key, value in overrides.items():
        _set_dotted(document, key, value)
    tmp = path.with_suffix(".yaml.tmp")
    with open(tmp, "w") as handle:
        yaml.dump(document, handle)
    os.replace(tmp, path)


def _workspace_changes(workspace: Path) -> tuple[list[str], list[str]]:
    """(changed or new files, deleted files) of the workspace against HEAD, gitignored files left out."""
    changed = _git(workspace, "diff", "--name-only", "--no-renames", "--diff-filter=d", "HEAD").stdout.splitlines()
    untracked = _git(workspace, "ls-files", "-o", "--exclude-standard").stdout.splitlines()
    deleted = _git(workspace, "diff", "--name-only", "--no-renames", "--diff-filter=D", "HEAD").stdout.splitlines()
    return sorted(set(changed) | set(untracked)), deleted


def _share_cache_and_remotes(workspace: Path, checkout: Path) -> None:
    """The worktree's .dvc/config.local: the workspace's cache, every remote at the url the workspace
    resolves (a relative url would otherwise resolve from inside runs/), and a site cache inside the
    checkout."""
    from configobj import ConfigObj  # DVC's own config format; reading it needs no DVC process

    cache = workspace / ".dvc" / "cache"
    remotes: dict[str, str] = {}
    for level in ("config", "config.local"):  # the repository's levels; the later one wins
        path = workspace / ".dvc" / level
        if not path.is_file():
            continue
        for section, values in ConfigObj(str(path)).items():
            if not isinstance(values, Mapping):
                continue
            found = re.fullmatch(r'remote\s+"(.+)"', section)
            key = "url" if found else "dir" if section == "cache" else None
            value = values.get(key) if key else None
            if not value:
                continue
            if "://" not in value and not Path(value).is_absolute():  # relative to .dvc/
                value = str((workspace / ".dvc" / value).resolve())
            if found:
                remotes[found.group(1)] = value
            else:
                cache = Path(value)
    # DVC's per-repository index and hash caches stay inside the checkout, not in /var/tmp/dvc.
    lines = ["[core]", f"    site_cache_dir = {workspace / SITE_CACHE}", "[cache]", f"    dir = {cache}"]
    for name, url in remotes.items():
        lines += [f"['remote \"{name}\"']", f"    url = {url}"]
    (checkout / ".dvc" / "config.local").write_text("\n".join(lines) + "\n")


def prepare(workspace: Path, name: str, overrides: Mapping[str, Any]) -> Path:
    """The experiment checkout of run `name`: ``runs/<name>``, a git worktree of HEAD with the
    workspace's uncommitted changes and params.yaml with `overrides`; returned as the run's workdir.

    An existing worktree of that name (a retried flow run) is reused as it is. In a workspace that
    cannot hold experiments (`can_hold_experiments`) a plain directory is returned instead.
    """
    workspace = Path(workspace).resolve()
    checkout = experiment_dir(workspace, name)
    if (checkout / ".git").is_file():
        return checkout
    if not can_hold_experiments(workspace):
        log.warning("%s is not a git repository with a commit: the run goes to %s and is not recorded as a DVC "
                    "experiment", workspace, checkout)
        checkout.mkdir(parents=True, exist_ok=True)
        return checkout
    if checkout.exists() and any(checkout.iterdir()):
        raise ExperimentError(f"{checkout} exists and is not an experiment checkout; remove it or choose another "
                              "flow run name")
    checkout.parent.mkdir(parents=True, exist_ok=True)
    _git(workspace, "worktree", "prune")  # forget worktrees whose folder was deleted by hand
    _git(workspace, "worktree", "add", "--detach", "-q", str(checkout), "HEAD")
    changed, deleted = _workspace_changes(workspace)
    for rel in changed:  # experiments start from the workspace as it is, like `dvc exp run`
        source = workspace / rel
        if source.is_file() and not rel.startswith(f"{RUNS_DIR}/"):
            (checkout / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, checkout / rel)
    for rel in deleted:
        (checkout / rel).unlink(missing_ok=True)
    write_params(checkout / "params.yaml", overrides)
    from tasks.params import load_params

    if load_params(checkout / "params.yaml").to_dict() != load_params(workspace / "params.yaml", overrides).to_dict():
        raise ExperimentError(f"{checkout / 'params.yaml'} does not hold the overrides {dict(overrides)} as the "
                              "flow validated them; the checkout was left for inspection")
    _share_cache_and_remotes(workspace, checkout)
    return checkout


def is_experiment_checkout(path: Path) -> bool:
    return (Path(path) / ".git").is_file() and (Path(path) / ".dvc").is_dir()


@contextmanager
def _save_lock(workspace: Path) -> Iterator[None]:
    path = Path(workspace) / SAVE_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# One DVC process for the whole recording (each `dvc` command line costs seconds of imports).
_RECORD = """
import json, subprocess, sys
from dvc.output import OutputDoesNotExistError
from dvc.repo import Repo

with Repo(".") as repo:
    try:
        repo.commit(force=True)
    except OutputDoesNotExistError as exc:  # `dvc exp save` would fail the same way
        print(json.dumps({"missing": str(exc)}))
        sys.exit(0)
    status = repo.status()
subprocess.run(["git", "add", "-A"], check=True)
with Repo(".") as repo:
    repo.experiments.save(name=sys.argv[1], force=True)
print(json.dumps({"dvc_status": status}, default=str))
"""


def record(workspace: Path, checkout: Path, name: str) -> dict[str, Any]:
    """`dvc commit -f`, then `dvc exp save --name <name> --force` in the experiment checkout.

    Everything the run wrote that git should hold (params.yaml, dvc.lock, the uncached metrics,
    DVC's .gitignore entries, new files) is staged in the worktree's own index first (`git add -A`),
    so the experiment commit holds it. Returns {"experiment", "ref", "rev", "dvc_status"} (the
    `dvc status` after the commit: {} when clean). When an output of a stage is missing (DVC
    cannot commit it, nor save the experiment) nothing is recorded: {"experiment": None,
    "missing": DVC's message}.
    """
    with _save_lock(workspace):
        done = subprocess.run([sys.executable, "-c", _RECORD, name], cwd=checkout, capture_output=True, text=True,
                              env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    if done.returncode != 0:
        raise ExperimentError(f"recording {checkout} as DVC experiment '{name}' (dvc commit -f, dvc exp save) "
                              f"failed (exit {done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    reply = json.loads(lines[-1]) if lines else {"dvc_status": {"unparsed": done.stdout[-500:]}}
    if "missing" in reply:  # a stage wrote no outputs (a stage switched off): nothing to record
        return {"experiment": None, "ref": None, "rev": None, "missing": reply["missing"], "dvc_status": None}
    changed = reply["dvc_status"]
    ref = experiment_ref(workspace, name)
    rev = _git(workspace, "rev-parse", "--verify", "-q", ref, check=False).stdout.strip() if ref else None
    return {"experiment": name, "ref": ref, "rev": rev or None, "dvc_status": changed}


def experiment_ref(workspace: Path, name: str) -> str | None:
    """The git ref of experiment `name` (refs/exps/<baseline>/<name>), None if there is none."""
    listed = _git(workspace, "for-each-ref", "--format=%(refname)", "refs/exps/", check=False).stdout.split()
    found = [ref for ref in listed if ref.rsplit("/", 1)[-1] == name and not ref.startswith("refs/exps/exec/")]
    return found[-1] if found else None
