"""One pipeline run per workspace: an advisory lock file under the workdir.

A second run against the same workspace gets `WorkspaceBusyError` naming the holder (pid, host,
flow run, start time) instead of clobbering the first run's outputs. The lock is a kernel
`flock` on ``<workdir>/.cache/pipeline.lock``: the kernel drops it when its process dies, so a
lock file left by a crashed run is simply taken over (and the takeover is logged); only a live
holder blocks. `lock_holder` / `stale_record` tell the two apart without taking the lock (serve.py
uses them to mark flow runs that died with a lost Prefect server as Crashed).

`flock` is local to one machine; on a shared network file system use one workspace per machine
(a DVC remote shares the artifacts, see README).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)

LOCK_NAME = "pipeline.lock"


class WorkspaceBusyError(RuntimeError):
    """Another pipeline run holds this workspace."""


def lock_path(workdir: str | Path) -> Path:
    return Path(workdir) / ".cache" / LOCK_NAME


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read_holder(handle) -> dict:
    handle.seek(0)
    text = handle.read()
    try:
        holder = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError:
        holder = {"raw": text.strip()[:200]}
    return holder if isinstance(holder, dict) else {"raw": str(holder)[:200]}


def _describe(holder: dict) -> str:
    if not holder:
        return "an unknown process"
    parts = [f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"]
    if holder.get("flow_run"):
        parts.append(f"flow run '{holder['flow_run']}'")
    if holder.get("started"):
        parts.append(f"started {holder['started']}")
    return ", ".join(parts)


def lock_holder(workdir: str | Path) -> dict | None:
    """Who holds the workspace's lock now: its record (pid, host, flow_run, started) while a live
    process holds the kernel lock, None when nobody does (no lock file, or one a dead run left).

    Probes with a shared lock, released at once: it never takes the workspace from anyone.
    """
    path = lock_path(workdir)
    try:
        handle = open(path)
    except FileNotFoundError:
        return None
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(handle)
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
    return None


def stale_record(workdir: str | Path) -> dict | None:
    """The record a run that died holding the lock left behind (its pid no longer holds the kernel
    lock), or None: no record, or a live holder."""
    path = lock_path(workdir)
    if not path.exists() or lock_holder(workdir) is not None:
        return None
    with open(path) as handle:
        record = _read_holder(handle)
    return record or None


@contextmanager
def workspace_lock(workdir: str | Path, flow_run: str | None = None) -> Iterator[Path]:
    """Hold the workspace's pipeline lock for the duration of the block.

    Raises WorkspaceBusyError at once (never waits) when a live process holds it.
    Yields the lock file's path.
    """
    path = lock_path(workdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(handle)
        handle.close()
        pid = holder.get("pid")
        note = ""
        if isinstance(pid, int) and holder.get("host") == socket.gethostname() and not _pid_alive(pid):
            # The recorded owner is gone but the kernel lock is still held: a process that inherited
            # the lock's file descriptor from it (e.g. a forked worker) is still running.
            note = (f"; pid {pid} has exited but a process it started still holds the lock "
                    f"(find it with `fuser {path}`)")
        raise WorkspaceBusyError(
            f"workspace {Path(workdir).resolve()} is in use by another pipeline run ({_describe(holder)}{note}); "
            f"wait for it to finish, or stop that process, then run again. Lock file: {path}"
        ) from None
    try:
        previous = _read_holder(handle)
        pid = previous.get("pid")
        if isinstance(pid, int) and pid != os.getpid():
            state = "alive but not holding it" if _pid_alive(pid) else "dead"
            log.warning("taking over the stale workspace lock %s left by %s (%s)", path, _describe(previous), state)
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "flow_run": flow_run,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }))
        handle.flush()
        yield path
    finally:
        # Leave an empty file: the next run finds no stale holder to report.
        handle.seek(0)
        handle.truncate()
        handle.flush()
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        handle.close()
