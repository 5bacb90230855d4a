"""Pinned numerics: the same floating-point answer on any x86-64 machine with AVX2.

The math libraries pick their kernels by CPU at load time, so the same code trains different
weights on an AMD EPYC and on an Intel Xeon with AVX-512 (the first update's policy loss already
differs in the 8th digit, and training amplifies it). Mode ``pinned`` (params
``numerics.mode``, the default) fixes every CPU-dependent numeric path to one instruction set
that every x86-64 machine of the last decade has (AVX2 + FMA, Haswell 2013 / Zen 2017):

| path | setting | why |
|---|---|---|
| MKL (torch's BLAS: every Linear layer) | ``MKL_CBWR=COMPATIBLE,STRICT`` | MKL honours its AVX2 branch only on Intel CPUs; elsewhere it silently takes AUTO (measured here on an AMD EPYC: ``AVX2``, ``SSE4_2`` and ``AUTO`` give the same weights, ``COMPATIBLE`` other ones). COMPATIBLE (SSE2 without rcpps/rsqrtps) is the one branch every vendor runs |
| ATen's vectorised kernels (sin, cos, sqrt, reductions in the env and the losses) | ``ATEN_CPU_CAPABILITY=avx2`` | ATen would pick AVX-512 kernels where the CPU has them |
| oneDNN | ``ONEDNN_MAX_CPU_ISA=AVX2`` (and the old name ``DNNL_MAX_CPU_ISA``) | same reason, for any op torch routes to oneDNN |
| numpy's SIMD dispatch (transcendentals, reductions in compare/report) | ``NPY_DISABLE_CPU_FEATURES`` = the AVX-512 groups | numpy dispatches AVX-512 loops where available; without them every AVX2 machine runs the same loops |
| numpy's BLAS (OpenBLAS, built with DYNAMIC_ARCH: the QP's NumPy fallback route multiplies stacks of small matrices with `@`) | ``OPENBLAS_CORETYPE=Haswell`` | OpenBLAS picks its kernels by CPU at load time: on an AVX-512 AMD EPYC (Zen 4) it took ``Cooperlake`` and the fallback's answer differed in the last bits from the ``Haswell``/``Zen`` kernels an AVX2 machine takes; a BarrierNet default run then left the committed numbers after 600 k steps. Haswell's kernels run on every AVX2 CPU |
| numba (the compiled QP loop) | ``NUMBA_CPU_NAME=haswell``, ``NUMBA_CPU_FEATURES`` empty | the loop has no fast-math, so LLVM never contracts a*b+c into an FMA and the result does not depend on the target (measured: the same bytes with the host's AVX-512 features and with Haswell's); pinned anyway so no future flag can make it. The empty feature string matters: with the CPU name alone numba still adds every feature of the host |
| threads | ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``NUMBA_NUM_THREADS`` = 1 | a parallel reduction's order depends on the thread count |

These are read when the libraries load, so they must be in the environment before torch, numpy
or numba is imported: `apply` sets them, and every entry point that computes a result calls it
first (`python -m tasks`, `flows/serve.py`, the test suite's conftest); processes started from
those (Prefect flow runs, the local Dask cluster's workers) inherit them. `require` is the check a
process runs before it computes a result: a process that is not pinned (e.g. a Dask worker
started by hand without ``python -m tasks numerics-env``) refuses with a message saying how to
start it. Mode ``native`` leaves the host's settings alone: faster by the amount measured in the
README, and results then depend on the CPU.

Not covered: ARM and GPUs (other kernels entirely; there the promise is statistical), and CPUs
without AVX2 (`require` refuses them in pinned mode).

This module imports only the standard library (and yaml, lazily), so it can run first.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterable, Mapping

MODES = ("pinned", "native")
DEFAULT_MODE = "pinned"
PINNED_ISA = "AVX2"

# numpy's dispatchable AVX-512 feature groups (numpy 1.26; commas or spaces separate them);
# naming one the CPU lacks is harmless.
_NUMPY_AVX512 = "AVX512F,AVX512CD,AVX512_KNL,AVX512_KNM,AVX512_SKX,AVX512_CLX,AVX512_CNL,AVX512_ICL,AVX512_SPR,AVX512FP16"

PINNED_ENV: dict[str, str] = {
    "MKL_CBWR": "COMPATIBLE,STRICT",
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "DNNL_MAX_CPU_ISA": "AVX2",
    "NPY_DISABLE_CPU_FEATURES": _NUMPY_AVX512,
    "OPENBLAS_CORETYPE": "Haswell",
    "NUMBA_CPU_NAME": "haswell",
    "NUMBA_CPU_FEATURES": "",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
}
"""Environment of a pinned process (see the module docstring for why each one)."""

MARKER = "BARRIERNET_NUMERICS"
"""Set by `apply` to the mode it applied; `require` reads it."""

_NUMERIC_MODULES = ("torch", "numpy", "numba")


class NumericsError(RuntimeError):
    """This process's numeric settings do not match the requested mode; the message says how to fix it."""


def environment(mode: str) -> dict[str, str]:
    """The variables `apply(mode)` sets (empty for native, apart from the marker)."""
    _check_mode(mode)
    return {**(PINNED_ENV if mode == "pinned" else {}), MARKER: mode}


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise NumericsError(f"numerics.mode={mode!r} is not a mode; accepted: {', '.join(MODES)}")


def _mismatches(env: Mapping[str, str]) -> list[str]:
    return [f"{k}={os.environ.get(k)!r} (pinned: {v!r})" for k, v in env.items() if os.environ.get(k) != v]


def apply(mode: str) -> None:
    """Set this process's numeric environment for `mode`; call before torch/numpy/numba load.

    Raises NumericsError if one of those libraries is already loaded under other settings
    (they would ignore the change, and the run would silently not be pinned).
    """
    target = environment(mode)
    if mode == "pinned":
        loaded = [m for m in _NUMERIC_MODULES if m in sys.modules]
        if loaded and _mismatches(PINNED_ENV):
            raise NumericsError(
                f"cannot pin numerics: {', '.join(loaded)} already loaded with "
                f"{'; '.join(_mismatches(PINNED_ENV))}. Call tasks.numerics.apply() before importing them, "
                "or start the process with the pinned environment (`python -m tasks numerics-env`)"
            )
    os.environ.update(target)


def require(mode: str) -> None:
    """Refuse to compute a result in a process whose numerics do not match `mode`.

    Pinned: every variable of PINNED_ENV is set (it must have been set before the libraries
    loaded: `apply` refuses otherwise, and a process started with them inherits them), and
    ATen really runs its AVX2 kernels (false on a CPU without AVX2). Native: the process must
    not be pinned (its results would silently be the pinned ones).
    """
    _check_mode(mode)
    if mode == "native":
        if os.environ.get(MARKER) == "pinned":
            raise NumericsError(
                "numerics.mode=native was requested but this process was started pinned "
                f"({MARKER}=pinned); start serve with BARRIERNET_NUMERICS_MODE=native, and Dask workers with "
                "`env $(python -m tasks numerics-env native) dask worker ...`"
            )
        return
    wrong = _mismatches(PINNED_ENV)
    if wrong:
        raise NumericsError(
            "this process is not pinned to the reproducible numerics (numerics.mode=pinned): "
            + "; ".join(wrong)
            + ". Start it with the pinned environment, e.g. for a Dask worker: "
            "`env $(python -m tasks numerics-env) dask worker <scheduler-address> --nthreads 1`, "
            "or run this cell with --set numerics.mode=native (results then depend on the CPU)"
        )
    if "torch" in sys.modules:
        capability = sys.modules["torch"].backends.cpu.get_cpu_capability()
        if capability.upper() != PINNED_ISA:
            raise NumericsError(
                f"numerics.mode=pinned needs ATen's {PINNED_ISA} kernels, but this process runs {capability!r} "
                "(a CPU without AVX2, or ATEN_CPU_CAPABILITY changed after torch loaded); "
                "use numerics.mode=native on this machine"
            )


def mode_from_argv(argv: Iterable[str], params_path: str | Path | None = None) -> str:
    """The numerics mode a `python -m tasks` command line asks for, read before params load.

    `--set numerics.mode=X` wins, then the params file's `numerics.mode`, then the default.
    Full validation happens later with the rest of the params; this only has to pick the mode
    before torch loads (the env var BARRIERNET_NUMERICS does not choose: params do).
    """
    argv = list(argv)
    for i, arg in enumerate(argv):
        text = argv[i + 1] if arg == "--set" and i + 1 < len(argv) else (arg[6:] if arg.startswith("--set=") else None)
        if text and text.replace(" ", "").startswith("numerics.mode="):
            return text.split("=", 1)[1].strip()
    for i, arg in enumerate(argv):
        if arg == "--params" and i + 1 < len(argv):
            params_path = argv[i + 1]
        elif arg.startswith("--params="):
            params_path = arg.split("=", 1)[1]
    return mode_from_params_file(params_path)


def mode_from_params_file(path: str | Path | None = None) -> str:
    """`numerics.mode` of a params file (default: the repo's params.yaml), or the default mode."""
    import yaml

    path = Path(path) if path else Path(__file__).resolve().parent.parent / "params.yaml"
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return DEFAULT_MODE  # the full params load reports the real error
    section = raw.get("numerics") if isinstance(raw, dict) else None
    mode = section.get("mode", DEFAULT_MODE) if isinstance(section, dict) else DEFAULT_MODE
    return mode if mode in MODES else DEFAULT_MODE


def describe() -> dict[str, str]:
    """What this process runs with, for the report's provenance (import after the libraries)."""
    info = {"mode": os.environ.get(MARKER, "unset"), "pinned_isa": PINNED_ISA if os.environ.get(MARKER) == "pinned" else "none (host default)"}
    if "torch" in sys.modules:
        info["aten_capability"] = sys.modules["torch"].backends.cpu.get_cpu_capability()
    for key in ("MKL_CBWR", "OPENBLAS_CORETYPE", "NUMBA_CPU_NAME"):
        info[key] = os.environ.get(key, "unset")
    return info


def shell_exports(mode: str = "pinned") -> str:
    """`KEY=VALUE` words for `env $(python -m tasks numerics-env) <command>`."""
    return " ".join(f"{k}={v}" for k, v in environment(mode).items())  # no value holds a space
