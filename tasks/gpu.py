"""Running well on a shared, contended GPU: headroom wait and device hygiene.

The seed projects died with CUDA out-of-memory at the first optimizer step on GPUs shared with
other people's jobs. Before training on CUDA we wait until `torch.cuda.mem_get_info` reports at
least ``gpu.min_free_mb`` free, polling every ``gpu.poll_seconds`` up to
``gpu.wait_timeout_seconds``; on timeout we either fall back to the CPU or fail, as
``gpu.on_timeout`` says. The probe, sleep and clock are injectable so tests run without a GPU.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Callable

import torch

from tasks.params import GPUParams

log = logging.getLogger(__name__)

ALLOC_CONF_DEFAULT = "expandable_segments:True"
_said_no_cuda = False


class GPUHeadroomTimeout(RuntimeError):
    """The GPU never had gpu.min_free_mb free within gpu.wait_timeout_seconds."""


@dataclass(frozen=True)
class Headroom:
    status: str  # "ready" | "no_cuda" | "fallback_cpu"
    waited_seconds: float
    free_mb: float | None
    polls: int


def set_allocator_defaults() -> None:
    """Expandable segments reduce fragmentation on a shared GPU; a user's own setting wins.

    Must run before CUDA is initialised (the allocator reads it once).
    """
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", ALLOC_CONF_DEFAULT)


def _default_probe(device: torch.device) -> tuple[int, int]:
    return torch.cuda.mem_get_info(device)


def wait_for_headroom(
    gpu: GPUParams,
    device: torch.device,
    probe: Callable[[torch.device], tuple[int, int]] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    on_progress: Callable[[float, float], None] | None = None,
    cuda_available: bool | None = None,
) -> Headroom:
    """Block until `device` has gpu.min_free_mb free (or time out as gpu.on_timeout says).

    `probe(device) -> (free_bytes, total_bytes)` defaults to torch.cuda.mem_get_info.
    `on_progress(free_mb, waited_seconds)` is called at every poll (log line, Prefect artifact).
    On a machine without CUDA (or a CPU device) it does nothing and says so once.
    """
    global _said_no_cuda
    available = torch.cuda.is_available() if cuda_available is None else cuda_available
    if device.type != "cuda" or not available:
        if not _said_no_cuda:
            log.info("no CUDA device in use: GPU headroom wait skipped")
            _said_no_cuda = True
        return Headroom("no_cuda", 0.0, None, 0)
    probe = probe or _default_probe
    started = clock()
    polls = 0
    while True:
        free_bytes, _total = probe(device)
        polls += 1
        free_mb = free_bytes / 2**20
        waited = clock() - started
        if on_progress is not None:
            on_progress(free_mb, waited)
        if free_mb >= gpu.min_free_mb:
            if polls > 1:
                log.info("GPU headroom: %.0f MB free after %.0f s (needed %d MB)", free_mb, waited, gpu.min_free_mb)
            return Headroom("ready", waited, free_mb, polls)
        if waited >= gpu.wait_timeout_seconds:
            message = (
                f"GPU {device} had only {free_mb:.0f} MB free after waiting {waited:.0f} s; "
                f"gpu.min_free_mb={gpu.min_free_mb}, gpu.wait_timeout_seconds={gpu.wait_timeout_seconds}"
            )
            if gpu.on_timeout == "fail":
                raise GPUHeadroomTimeout(message + " (gpu.on_timeout=fail; set it to fallback_cpu to train on the CPU)")
            log.warning("%s: falling back to the CPU (gpu.on_timeout=fallback_cpu)", message)
            return Headroom("fallback_cpu", waited, free_mb, polls)
        log.info("waiting for GPU headroom: %.0f MB free, need %d MB (%.0f s so far)", free_mb, gpu.min_free_mb, waited)
        sleep(gpu.poll_seconds)


def release_cached_memory() -> None:
    """Give cached CUDA blocks back between stages so other jobs on the GPU can use them."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
