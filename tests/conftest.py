"""Test-suite setup: the pinned numerics (tasks/numerics.py) before any test imports torch.

The suite runs in the mode the pipeline uses by default, so a flow or stage run in-process (and
the local Dask workers it spawns, which inherit this environment) passes `numerics.require`.
"""

from tasks import numerics

numerics.apply("pinned")

import pytest  # noqa: E402  (after the pin: pytest plugins may import numpy)


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server per test process (xdist worker), shared by every test that
    runs a flow: each start costs 20-30 s on a loaded 2-core machine."""
    from prefect.testing.utilities import prefect_test_harness

    # The default 30 s start-up timeout is too short on a loaded 2-core CI machine.
    with prefect_test_harness(server_startup_timeout=180):
        yield



# The longest module (about 3 min: two main.sh runs with their own server) goes first; the others
# keep their alphabetical order. scripts/test.sh runs `-n auto --dist loadfile
# --no-loadscope-reorder`, so xdist hands out modules in this order. Measured on 2 cores: with
# xdist's default order (most tests first) this module ran alone at the end; with every heavy
# module first, two end-to-end runs (each with its own Dask workers) shared the 2 cores and the
# suite was slower still. Alphabetical order interleaves the other heavy modules with light ones.
FIRST = ("test_server_loss.py",)


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.path.name not in FIRST)  # stable: every other order is kept
