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
