"""Which implementation solves a batch: one function, one override.

Routes of the exact backend (qpth has one route, `model.qp.qpth_adapter`):

``"cpu_single"``           CPU, n = 2, B = 1: the whole problem in Python floats
                           (`model.qp.cpu_n2`); what it cannot settle takes ``"cpu_numpy"``.
``"cpu_batch"``            CPU, n = 2, B > 1: the same arithmetic compiled with numba into one loop
                           over the batch (`model.qp.cpu_n2_kernels`); the elements it cannot settle
                           (infeasible, round-off) take the NumPy full rule.
``"cpu_numpy"``            CPU, n = 2, the NumPy rule for the whole batch (`model.qp.cpu_numpy`).
                           The default routes reach it only as their fallback (measured: a
                           default training and evaluation never call it otherwise); tests force
                           it to compare it with the reference.
``"reference"``            the torch solver (`model.qp.reference`) with host syncs (CPU, other n).
``"reference_sync_free"``  the torch solver without host syncs: accelerators (a sync stalls the
                           device). Forced on the CPU, tests run the accelerator branches there.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

ROUTES = ("cpu_single", "cpu_batch", "cpu_numpy", "reference", "reference_sync_free")
CPU_N2_ROUTES = ("cpu_single", "cpu_batch", "cpu_numpy")
FORCEABLE = ("cpu_numpy", "reference", "reference_sync_free")

# The one override (tests, benchmarks): None, or a route of FORCEABLE. "cpu_numpy" applies where
# the CPU n = 2 routes do (CPU, n = 2) and leaves other problems to the default choice; the
# reference routes apply everywhere.
FORCED_ROUTE: str | None = None


def choose_route(device: torch.device, n: int, batch: int) -> str:
    """The exact backend's route for a batch of `batch` problems with n variables on `device`."""
    forced = FORCED_ROUTE
    if forced is not None:
        if forced not in FORCEABLE:
            raise ValueError(f"model.qp.routing.FORCED_ROUTE={forced!r}; accepted: None or one of "
                             f"{', '.join(map(repr, FORCEABLE))}")
        if forced != "cpu_numpy" or (device.type == "cpu" and n == 2):
            return forced
    if device.type != "cpu":
        return "reference_sync_free"
    if n != 2:
        return "reference"
    return "cpu_single" if batch == 1 else "cpu_batch"


def sync_free(device: torch.device) -> bool:
    """No host syncs off the CPU (they stall the device), nor where a test forces that route;
    on the CPU they are free."""
    return FORCED_ROUTE == "reference_sync_free" or device.type != "cpu"


@contextlib.contextmanager
def forced(route: str | None) -> Iterator[None]:
    """Set `FORCED_ROUTE` for the duration of a with-block (tests may also monkeypatch it)."""
    global FORCED_ROUTE
    if route is not None and route not in FORCEABLE:
        raise ValueError(f"route={route!r}; accepted: None or one of {', '.join(map(repr, FORCEABLE))}")
    previous, FORCED_ROUTE = FORCED_ROUTE, route
    try:
        yield
    finally:
        FORCED_ROUTE = previous
