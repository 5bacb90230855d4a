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


# The heaviest modules (end-to-end runs; measured with `pytest --durations`), heaviest first.
# scripts/test.sh runs `-n auto --dist loadfile --no-loadscope-reorder`: xdist hands whole modules to workers in
# collection order, so starting with these keeps one long module from running alone at the end.
HEAVIEST_FIRST = (
    "test_server_loss.py", "test_flow.py", "test_dvc.py", "test_pipeline_e2e.py", "test_experiments.py",
    "test_dask_cluster.py", "test_train.py", "test_numerics.py", "test_tuning.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(HEAVIEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a module kept
