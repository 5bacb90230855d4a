"""Test-suite setup: the pinned numerics (tasks/numerics.py) before any test imports torch.

The suite runs in the mode the pipeline uses by default, so a flow or stage run in-process (and
the local Dask workers it spawns, which inherit this environment) passes `numerics.require`.
"""

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tasks import numerics

numerics.apply("pinned")

import pytest  # noqa: E402  (after the pin: pytest plugins may import numpy)


SERVER_RECORD = "prefect-server.json"
REPO_ROOT = Path(__file__).resolve().parent.parent


def _shared_root(tmp_path_factory) -> Path:
    """The session's temp root, the same for every xdist worker (each worker's basetemp lies in it)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(root: Path) -> dict:
    """`prefect server start` on a free loopback port with its own PREFECT_HOME (SQLite) under
    `root`, in its own process group so that it outlives the worker that started it."""
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(root / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = open(root / "prefect-server.log", "w")
    server = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host",
                               "127.0.0.1", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 180  # a loaded 2-core CI machine takes 15-30 s
    while time.monotonic() < deadline and server.poll() is None:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as response:
                if response.status == 200:
                    return {"url": url, "pid": server.pid}
        except OSError:
            time.sleep(0.3)
    os.killpg(server.pid, signal.SIGKILL)
    raise RuntimeError(f"the test Prefect server did not answer at {url}: {(root / 'prefect-server.log').read_text()[-2000:]}")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """One temporary Prefect server for the whole test session, shared by every xdist worker and
    every test that runs a flow: each start costs about 13 s of CPU (15-30 s of wall on a loaded
    2-core machine). The first worker to ask starts it, under a file lock; the others read its
    address; the controlling process stops it at the end (`pytest_sessionfinish`)."""
    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = _shared_root(tmp_path_factory)
    with open(root / "prefect-server.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = root / SERVER_RECORD
        if not record.exists():
            record.write_text(json.dumps(_start_server(root)))
        url = json.loads(record.read_text())["url"]
    with temporary_settings(updates={PREFECT_API_URL: url}), pytest.MonkeyPatch.context() as patch:
        patch.setattr(SubprocessASGIServer, "start", _no_temporary_server)
        yield url
        # the flows' log records still queued go now, while the server answers: the controlling
        # process stops it at the end (`pytest_sessionfinish`), and a worker that flushed them at
        # its exit would print "Error logging to API"
        APILogWorker.drain_all(timeout=5)


def _no_temporary_server(self, *args, **kwargs):
    """Stands in for `SubprocessASGIServer.start` while the test server runs. A flow that finds no
    PREFECT_API_URL starts a temporary server of its own (in prefect 3.8 the client does where
    PREFECT_SERVER_EPHEMERAL_ENABLED is true, the default profile's value; the events worker does
    wherever PREFECT_API_KEY is unset: docs/TOOLCHAIN.md): a thread started without a copy of the
    test's context does not see the test server's URL, which `temporary_settings` sets
    context-locally. That server costs seconds and prints a logging error at exit; here it fails
    the test that caused it."""
    raise RuntimeError("a flow found no PREFECT_API_URL and would start a temporary Prefect server: run it in "
                       "the test's context (a thread: `contextvars.copy_context().run`), which has the "
                       "`prefect_server` fixture's URL")


def pytest_report_header(config):
    """The log names the machine: the pinned numbers must not depend on it, and
    tests/test_numerics.py compares this machine's with the ones recorded on another CPU."""
    from tasks.report.provenance import cpu_model

    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        flags = []
    features = ", ".join(f for f in ("avx2", "fma", "avx512f") if f in flags) or "unknown"
    return f"CPU: {cpu_model()}, {os.cpu_count()} CPUs ({features})"


def pytest_sessionstart(session):
    """The controlling process fills the repo's numba caches (`python -m tasks warm-kernels`) before
    any test runs, when they are empty (a fresh clone, as CI has). Every end-to-end test copies
    them into its workspace (`helpers.make_workspace`); empty, each workspace's first process compiled the kernels again,
    about 18 s of CPU each, about 1.5 min of a CI run in all. A separate process: this one's RNG
    and numerics stay untouched."""
    if hasattr(session.config, "workerinput"):
        return
    _check_xdist_keeps_groups(session.config)
    caches = REPO_ROOT / "model" / "qp" / "__pycache__", REPO_ROOT / "model" / "__pycache__"
    kernels = ("cpu_n2_kernels.solve_batch-*", "cbf_beta._boxes_kernel-*")
    if all(any(c.glob(f"{name}.*.nbi")) for c, name in zip(caches, kernels)):
        return
    result = subprocess.run([sys.executable, "-m", "tasks", "warm-kernels"], cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"compiling the numba kernels failed:\n{result.stderr[-2000:]}")


def pytest_sessionfinish(session):
    """The controlling process (not an xdist worker) stops the shared Prefect server, if one started."""
    if hasattr(session.config, "workerinput"):
        return
    record = _shared_root(session.config._tmp_path_factory) / SERVER_RECORD
    if record.exists():
        try:
            os.killpg(json.loads(record.read_text())["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass


def pytest_collection_modifyitems(config, items):
    """The end-to-end tests first, those with the longest time budget (pytest-timeout mark) first.

    scripts/test.sh hands tests to the xdist workers one at a time in this order (`--dist loadgroup
    --no-loadscope-reorder`; a module with module-scoped fixtures is one `xdist_group`): the long
    runs overlap from the start and the many short tests fill the gaps at the end, instead of one
    worker finishing a long module alone while the other idles."""

    def budget(item) -> float:
        timeout = item.get_closest_marker("timeout")
        return float(timeout.args[0]) if timeout and timeout.args else 0.0

    items.sort(key=lambda item: (item.get_closest_marker("slow") is None, -budget(item)))


def _check_xdist_keeps_groups(config) -> None:
    """Under `--dist loadgroup` (scripts/test.sh), refuse a pytest whose test ids pytest-xdist
    cannot tag with their group. xdist's workers append "@group" to `item._nodeid` and the
    controller schedules by that suffix alone; pytest 9.2 reads the id from `Node._id` instead, so
    there every group is spread over the workers and its module fixtures (a whole tiny pipeline
    run) run once per worker, silently. Probed by xdist's own move on a bare node."""
    from _pytest.nodes import Node

    if config.getvalue("dist") != "loadgroup":
        return
    node = object.__new__(Node)
    node._nodeid = "tests/test_x.py::test_probe@group"
    try:
        tagged = node.nodeid == node._nodeid
    except AttributeError:
        tagged = False
    if not tagged:
        raise pytest.UsageError(
            f"pytest {pytest.__version__} with this pytest-xdist ignores xdist_group under --dist loadgroup "
            "(a group's module fixtures would run on every worker); accepted: pytest<9.2 (pyproject.toml's dev extra)")
