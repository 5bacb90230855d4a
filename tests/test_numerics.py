"""Pinned numerics (tasks/numerics.py): the pin overrides whatever the host sets.

The end-to-end check trains and evaluates tiny cells through `python -m tasks` in fresh
processes whose environment carries host-level settings that change kernels (MKL's branch,
ATen's capability, numpy's SIMD dispatch, numba's target, thread counts). In pinned mode every
run must give the same weights and the same episodes. The control runs the same change in native
mode, one group of settings at a time (torch's kernels; NumPy's, OpenBLAS's and numba's), and
each must see different weights: it shows the fingerprint is sensitive enough to catch a numeric
path that escapes the pin.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from tasks import numerics
from tests.helpers import REPO_ROOT

# Two PPO updates per algorithm with a minibatch big enough for MKL's GEMM kernels to matter; every
# algorithm and every arm but the sweep's (each safety layer's own numeric path: BarrierNet's QP,
# CBF-Beta's safe box and Beta draws, the shield, the deployment filters).
TINY_CELLS = [
    "train.algos=[baseline,barriernet,cbf_beta,shielded]",
    "train.seeds=[0]",
    "train.total_steps=2048",
    "train.num_envs=64",
    "train.rollout_steps=16",
    "train.num_minibatches=2",
    "train.update_epochs=2",
    "env.max_steps=64",
    "eval.dev_episodes=6",
    "eval.test_episodes=6",
    "eval.num_envs=6",
    "eval.arms=[baseline,baseline_ct_filter,baseline_dcbf_filter,barriernet,barriernet_rcbf,cbf_beta,cbf_beta_rcbf,"
    "shielded]",
    "eval.filter_sweep.enabled=false",  # no arm here reads the sweep's choice
]

# Host-level settings a machine may have; each would change the numbers if it reached a kernel.
MKL_ATEN = {"MKL_CBWR": "AUTO", "ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"}
NUMPY_NUMBA_THREADS = {"NPY_DISABLE_CPU_FEATURES": "AVX2,FMA3", "NUMBA_CPU_NAME": "generic",
                       "OPENBLAS_CORETYPE": "Prescott", "OPENBLAS_NUM_THREADS": "2",
                       "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
# Pinned runs: none of the host's settings, and every one of them at once (one run each: a process
# start with the full pipeline import is most of a run's cost).
HOST_SETTINGS = {
    "none": {},
    "every-setting": {**MKL_ATEN, **NUMPY_NUMBA_THREADS},
}

# The pinned run's fingerprint as recorded on one machine (its CPU in the file).
RECORDED_FINGERPRINT = REPO_ROOT / "tests" / "data" / "pinned_fingerprint.json"

# Wall-clock columns of the episode table (they differ from run to run by nature).
_TIMING_COLUMN_HINTS = ("_ms", "seconds")


def _host_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without any pin (a fresh shell), plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in numerics.PINNED_ENV and k != numerics.MARKER}
    env.update(extra)
    return env


def _weights_digest(model: Path) -> str:
    """sha256 of a checkpoint's trained tensors (actor, critic, observation normaliser: names,
    dtypes, shapes and bytes), not of the file: the file also records the training code's hash,
    which any edit of that code changes."""
    import torch

    record, digest = torch.load(model, weights_only=True), hashlib.sha256()
    for part in ("actor", "critic", "obs_rms"):
        for name, tensor in sorted(record[part].items()):
            digest.update(f"{part}.{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
            digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _recorded_fingerprint() -> dict[str, str]:
    """The fingerprint recorded in RECORDED_FINGERPRINT (cell -> digest)."""
    return json.loads(RECORDED_FINGERPRINT.read_text())["fingerprint"]


def _fingerprint(workdir: Path) -> dict[str, str]:
    """sha256 of every cell's trained weights and of its episode table without wall-clock columns."""
    prints = {}
    for model in sorted((workdir / "results" / "train").glob("*/model.pt")):
        prints[f"train/{model.parent.name}"] = _weights_digest(model)
    for table in sorted((workdir / "results" / "eval").glob("*/episodes.csv")):
        frame = pd.read_csv(table)
        frame = frame[[c for c in frame.columns if not any(h in c for h in _TIMING_COLUMN_HINTS)]]
        prints[f"eval/{table.parent.name}"] = hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()[:16]
    return prints


def _train_and_evaluate(tmp: Path, name: str, extra_env: dict[str, str], mode: str,
                        evaluate: bool = True, launcher: tuple[str, ...] = ()) -> dict[str, str]:
    """Both stages (or train alone) through the command line's own entry in ONE fresh process
    (the mode applied before torch loads, as `python -m tasks` does). launcher: what runs the
    interpreter (e.g. qemu-user emulating another CPU); empty: this CPU."""
    workdir = tmp / name
    env = {**_host_env(extra_env), "BARRIERNET_STATE_DIR": str(tmp / f"state-{name}")}
    args = ["--workdir", str(workdir), f"--set=numerics.mode={mode}", *(f"--set={o}" for o in TINY_CELLS)]
    stages = "main(['train', *args]) or main(['evaluate', *args])" if evaluate else "main(['train', *args])"
    code = (
        "import sys\n"
        "from tasks import numerics\n"
        f"numerics.apply({mode!r})\n"
        "from tasks.__main__ import main\n"
        f"args = {args!r}\n"
        f"sys.exit({stages})\n"
    )
    done = _python(code, env, launcher)
    assert done.returncode == 0, f"train + evaluate under {name} failed:\n{done.stderr[-3000:]}"
    prints = _fingerprint(workdir)
    assert len(prints) == (8 if evaluate else 4), prints  # four trained cells (and four evaluated ones)
    return prints


def _python(code: str, env: dict[str, str], launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter, started by `launcher` (qemu-user, another glibc's loader; empty: this
    machine's own)."""
    return subprocess.run([*launcher, sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True)


@pytest.mark.slow
def test_pinned_runs_are_identical_under_host_settings_and_native_ones_are_not(tmp_path):
    pinned = {name: _train_and_evaluate(tmp_path, f"pinned-{name}", extra, "pinned")
              for name, extra in HOST_SETTINGS.items()}
    reference = pinned["none"]
    for name, prints in pinned.items():
        assert prints == reference, f"host settings {HOST_SETTINGS[name]} escaped the pin: {prints} vs {reference}"
    # ... and as on the machine that recorded it: the promise is the same numbers on any x86-64
    # CPU with AVX2, so every machine that runs this test checks it (CI's included)
    from tasks.report.provenance import cpu_model

    recorded = json.loads(RECORDED_FINGERPRINT.read_text())
    assert reference == recorded["fingerprint"], (
        f"this machine's ({cpu_model()}, {os.cpu_count()} CPUs) pinned run differs from the one recorded on "
        f"{recorded['recorded_on']}: {reference}; "
        f"a change meant to move the numbers updates {RECORDED_FINGERPRINT.relative_to(REPO_ROOT)}")

    # Control: each group of the same kernel changes, without the pin, moves the weights (torch's
    # kernels; NumPy's, OpenBLAS's and numba's, which the default NumPy learner runs on).
    native_host = _train_and_evaluate(tmp_path, "native-none", {}, "native", evaluate=False)
    for group, settings in (("mkl-aten", MKL_ATEN), ("numpy-numba-threads", NUMPY_NUMBA_THREADS)):
        native_changed = _train_and_evaluate(tmp_path, f"native-{group}", settings, "native", evaluate=False)
        moved = [cell for cell in native_host if native_host[cell] != native_changed[cell]]
        assert moved, f"{group}: {settings} moved no weight without the pin; the check could not see an escape"


# CPUs other than this one, emulated by qemu-user (`apt-get install qemu-user`): its TCG runs AVX2
# and FMA but no AVX-512 and reports the model's own vendor and CPUID, so numpy's SIMD dispatch,
# OpenBLAS's kernel choice, MKL's branches (an Intel CPU gets other ones than an AMD CPU) and
# LLVM's host detection all see that CPU. {qemu model: the CPU name LLVM detects in it}: an Intel
# Haswell (the oldest CPU the pin promises: AVX2 without AVX-512) and an AMD Zen 2.
EMULATED_CPUS = {"Haswell": "haswell", "EPYC-Rome": "znver2"}
NUMBA_TARGET_PINNED = {key: numerics.PINNED_ENV[key] for key in ("NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES")}
QEMU = shutil.which("qemu-x86_64")
_WHAT_THE_CPU_LOOKS_LIKE = ("import llvmlite.binding as llvm\n"
                            "from numpy.core._multiarray_umath import __cpu_features__ as features\n"
                            "print(llvm.get_host_cpu_name(), features['AVX2'], features['AVX512F'])")


@pytest.mark.slow
@pytest.mark.skipif(QEMU is None, reason="emulating other CPUs needs qemu-user (apt-get install qemu-user)")
@pytest.mark.parametrize("cpu", sorted(EMULATED_CPUS))
def test_the_pinned_run_is_the_recorded_one_on_an_emulated_other_cpu(tmp_path, cpu):
    """The recorded fingerprint came from one machine (an AVX-512 AMD Zen 4); the promise is the same
    numbers on any x86-64 CPU with AVX2. Here the tiny pinned run goes through an emulated Intel
    Haswell and AMD Zen 2 and must give the recorded fingerprint. The control: the same CPU
    unpinned (numba's target aside) moves the numbers, so the emulation reaches kernels that depend
    on the CPU. (The compiled numba loops come from the shared on-disk cache: the pin fixes their
    target, so a colleague's cold compile emits the same machine code.)"""
    launcher = (QEMU, "-cpu", cpu)
    done = _python(_WHAT_THE_CPU_LOOKS_LIKE, _host_env({}), launcher)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = done.stdout.split()
    assert seen == [EMULATED_CPUS[cpu], "True", "False"], f"qemu -cpu {cpu} looks like {seen} from inside"
    recorded = _recorded_fingerprint()
    pinned = _train_and_evaluate(tmp_path, f"pinned-{cpu}", {}, "pinned", launcher=launcher)
    assert pinned == recorded, f"the pinned run on an emulated {cpu} left the recorded numbers: {pinned}"
    # Unpinned but for numba's target, which would miss the shared cache and compile every kernel
    # under emulation (152 s against 39 s on a fresh clone). The control is about the kernels the
    # emulated CPU's features and vendor choose: MKL's, OpenBLAS's, numpy's SIMD loops.
    native = _train_and_evaluate(tmp_path, f"native-{cpu}", NUMBA_TARGET_PINNED, "native", evaluate=False,
                                 launcher=launcher)
    assert any(native[cell] != recorded[cell] for cell in native), \
        f"unpinned, the emulated {cpu} gave the pinned weights: the check could not see its kernels"


# Other C libraries than this machine's. numpy hands some float functions (float32 log1p; float64
# exp and log on AVX2) to the system's libm, and torch's CPU kernels hand strided inputs and
# vector tails to it; glibc 2.41 and 2.43 replaced many of those functions with correctly rounded
# ones (CORE-MATH) that differ in the last bit. BARRIERNET_OTHER_GLIBC: ':'-separated directories,
# each with another glibc's ld-linux-x86-64.so.2, libc.so.6 and libm.so.6 (`bash
# scripts/fetch_glibc.sh` unpacks Debian 13's and unstable's under .cache/glibc/ and lists them in
# .cache/glibc/dirs); the interpreter runs under each, with this machine's other libraries.
OTHER_GLIBCS = [d for d in os.environ.get("BARRIERNET_OTHER_GLIBC", "").split(":") if d]
_HOST_LIBRARY_DIRS = "/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu:/lib64:/usr/lib64"
_LIBM_LOG1PF = ("import hashlib, platform, numpy as np\n"
                "x = np.random.default_rng(0).uniform(-0.99, 50, 2_000_000).astype(np.float32)\n"
                "print(platform.libc_ver()[1], hashlib.sha256(np.log1p(x).tobytes()).hexdigest())")


@pytest.mark.slow
@pytest.mark.skipif(not OTHER_GLIBCS, reason="set BARRIERNET_OTHER_GLIBC to other glibc builds (scripts/fetch_glibc.sh)")
@pytest.mark.parametrize("glibc", OTHER_GLIBCS or ["none"])
def test_the_pinned_run_is_the_recorded_one_under_another_glibc(tmp_path, glibc):
    """The tiny pinned run under another glibc must give the recorded fingerprint. The control:
    numpy's float32 log1p, which is that glibc's log1pf, gives other bits there than here, so the
    other libm is the one loaded and it does round differently (the hole `portable_log1p` and
    `model.cbf_beta.softplus` close: CBF-Beta's weights and actions moved under glibc 2.41)."""
    launcher = (str(Path(glibc) / "ld-linux-x86-64.so.2"), "--library-path", f"{glibc}:{_HOST_LIBRARY_DIRS}")
    # numpy's AVX-512 loops compute log1p themselves: without them (as pinned) it is libm's
    no_avx512 = _host_env({"NPY_DISABLE_CPU_FEATURES": numerics.PINNED_ENV["NPY_DISABLE_CPU_FEATURES"]})
    here = _python(_LIBM_LOG1PF, no_avx512).stdout.split()
    done = _python(_LIBM_LOG1PF, no_avx512, launcher)
    assert done.returncode == 0, done.stderr[-2000:]
    there = done.stdout.split()
    assert there[0] != here[0], f"{glibc} is this machine's glibc {here[0]}"
    assert there[1] != here[1], f"glibc {there[0]} rounds float32 log1p as {here[0]} does: the control sees nothing"
    recorded = _recorded_fingerprint()
    pinned = _train_and_evaluate(tmp_path, f"pinned-glibc-{there[0]}", {}, "pinned", launcher=launcher)
    assert pinned == recorded, f"the pinned run under glibc {there[0]} left the recorded numbers: {pinned}"


def test_an_unpinned_process_refuses_to_compute_and_says_how_to_start_a_worker():
    done = _python("import torch\nfrom tasks import numerics\nnumerics.require('pinned')", _host_env({}))
    assert done.returncode != 0
    assert "NumericsError" in done.stderr and "dask worker" in done.stderr and "MKL_CBWR" in done.stderr


def test_pinning_after_torch_loaded_is_refused():
    done = _python("import torch\nfrom tasks import numerics\nnumerics.apply('pinned')", _host_env({}))
    assert done.returncode != 0 and "already loaded" in done.stderr


def test_a_process_started_with_numerics_env_passes_require():
    words = subprocess.run([sys.executable, "-m", "tasks", "numerics-env"], cwd=REPO_ROOT, env=_host_env({}),
                           capture_output=True, text=True, check=True).stdout.split()
    env = _host_env(dict(w.split("=", 1) for w in words))
    done = _python("import torch\nfrom tasks import numerics\nnumerics.require('pinned')\n"
                   "print(torch.backends.cpu.get_cpu_capability())", env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "AVX2"


def test_pinned_mode_refuses_aten_without_avx2(monkeypatch):
    """A CPU without AVX2 (or ATEN_CPU_CAPABILITY changed after torch loaded): the environment is the
    pinned one, yet ATen's kernels are not, so the results would not be the promised bits."""
    import torch

    numerics.require("pinned")  # this process is pinned (the suite runs so)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")
    with pytest.raises(numerics.NumericsError, match="needs ATen's AVX2 kernels, but this process runs 'DEFAULT'"):
        numerics.require("pinned")


def test_native_mode_refuses_a_pinned_process():
    with pytest.raises(numerics.NumericsError, match="BARRIERNET_NUMERICS_MODE=native"):
        numerics.require("native")  # the test suite itself runs pinned (conftest.py)


def test_the_cli_refuses_a_bad_mode_before_any_work(tmp_path):
    done = subprocess.run([sys.executable, "-m", "tasks", "train", "--workdir", str(tmp_path),
                           "--set", "numerics.mode=fast"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert done.returncode != 0
    assert "numerics.mode" in done.stderr and "pinned" in done.stderr and "native" in done.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["train", "--set", "numerics.mode=native"], "native"),
        (["train", "--set=numerics.mode=native"], "native"),
        (["train", "--set", "train.seeds=[0]"], "pinned"),
    ],
)
def test_mode_from_argv(argv, expected):
    assert numerics.mode_from_argv(argv) == expected


def test_mode_from_a_params_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("numerics:\n  mode: native\n")
    assert numerics.mode_from_argv(["train", "--params", str(path)]) == "native"
    path.write_text("train:\n  seeds: [0]\n")
    assert numerics.mode_from_argv(["train", "--params", str(path)]) == numerics.DEFAULT_MODE


def test_the_suite_runs_pinned():
    import torch

    assert os.environ[numerics.MARKER] == "pinned"
    assert torch.backends.cpu.get_cpu_capability() == "AVX2"
    assert json.loads(json.dumps(numerics.describe()))["MKL_CBWR"] == "COMPATIBLE,STRICT"


# The QP's NumPy route (model/qp/cpu_numpy.py; the compiled loop's fallback) multiplies stacks of
# small matrices with `@`, which numpy hands to its OpenBLAS, built to pick its kernels by CPU.
_QP_NUMPY_ROUTE = """
import hashlib, sys
from tasks import numerics
numerics.apply(sys.argv[1])
import torch
from model.qp import routing, solve_qp
from tasks.params import load_params
from tasks.qp_benchmark import build_problems
params = load_params()
digest = hashlib.sha256()
problems = build_problems(params.env, params.cbf, 8, 2048)
H, f, A, b = [t.clone().requires_grad_() for t in problems.head(2048)[:4]]
with routing.forced("cpu_numpy"):
    solution = solve_qp(H, f, A, b, backend="exact", mask=problems.mask)
solution.u.sum().backward()
for t in (solution.u, f.grad, A.grad, b.grad):
    digest.update(t.detach().numpy().tobytes())
print(digest.hexdigest())
"""


def _qp_numpy_route(mode: str, host: dict[str, str]) -> str:
    """The QP route's digest from a fresh process in `mode` under the host settings."""
    env = _host_env(host)
    done = subprocess.run([sys.executable, "-c", _QP_NUMPY_ROUTE, mode], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout.strip()


def test_the_qp_numpy_route_is_pinned_whatever_blas_kernels_the_host_would_pick():
    """An AVX-512 host's OpenBLAS kernels (Cooperlake on a Zen 4 EPYC) moved BarrierNet's weights
    away from an AVX2 machine's. Pinned, the host's choice no longer matters and the answer is
    the Haswell kernels'; native, it follows the kernels (the control: Prescott's SSE3 kernels run
    on any x86-64). OpenBLAS's thread count moves its bits too (measured on a (1024, 64) x (64, 64)
    product: 2 threads against 1), so the native runs hold it at the pin's one thread."""
    hosts = [{}, {"OPENBLAS_CORETYPE": "Prescott"}, {"OPENBLAS_CORETYPE": "Zen", "OPENBLAS_NUM_THREADS": "2"}]
    pinned = [_qp_numpy_route("pinned", host) for host in hosts]
    assert len(set(pinned)) == 1, dict(zip(map(str, hosts), pinned))
    one_thread = {"OPENBLAS_NUM_THREADS": "1"}
    assert pinned[0] == _qp_numpy_route("native", {"OPENBLAS_CORETYPE": "Haswell", **one_thread})
    assert _qp_numpy_route("native", {"OPENBLAS_CORETYPE": "Prescott", **one_thread}) != pinned[0]


def test_the_readme_quotes_the_committed_metrics_digest():
    """The README's reproduction promise names the sha256 a colleague should get; it must be the
    digest of the committed file, recomputed here, or the promise points at a stale run."""
    readme = (REPO_ROOT / "README.md").read_text()
    quoted = re.findall(r"`([0-9a-f]{64})`", readme)
    committed = hashlib.sha256((REPO_ROOT / "results" / "compare" / "metrics.json").read_bytes()).hexdigest()
    assert quoted, "README.md quotes no sha256 of results/compare/metrics.json"
    assert quoted == [committed], f"README.md quotes {quoted}; the committed metrics.json is {committed}"
