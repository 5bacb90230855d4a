"""Test-suite setup: the pinned numerics (tasks/numerics.py) before any test imports torch.

The suite runs in the mode the pipeline uses by default, so a flow or stage run in-process (and
the local Dask workers it spawns, which inherit this environment) passes `numerics.require`.
"""

from tasks import numerics

numerics.apply("pinned")
