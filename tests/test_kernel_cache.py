"""`python -m tasks warm-kernels` (model/kernel_cache.py): with a fresh numba cache, it compiles
every loop for the argument types the pipeline uses, so that a training iteration of each
algorithm and a float64 QP solve with its gradient afterwards compile nothing more."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# What a training cell of each algorithm runs, at a tiny size, as the cells run it (pinned
# numerics, the default learner), the QP benchmark's float64 solve with its backward, and a
# scenario's step from a hand-set state.
_REAL_PATHS = """
from tasks import numerics
numerics.apply("pinned")
import torch
from model.qp import solve_qp
from tasks.params import load_params
from tasks.train import Trainer
tiny = {"train.num_envs": 8, "train.rollout_steps": 8, "train.num_minibatches": 2, "train.total_steps": 10**5}
for algo in ("baseline", "barriernet", "cbf_beta", "shielded"):
    Trainer(load_params(overrides=tiny), algo, 0, update_device="cpu").train_one_update()
g = torch.Generator().manual_seed(0)
H = torch.eye(2, dtype=torch.float64).expand(16, 2, 2)
f = torch.randn(16, 2, dtype=torch.float64, generator=g, requires_grad=True)
A = torch.randn(16, 3, 2, dtype=torch.float64, generator=g)
b = torch.rand(16, 3, dtype=torch.float64, generator=g)
solve_qp(H, f, A, b, backend="exact").u.sum().backward()
from env import PursuitEvasionCore  # a scenario's hand-set state (its obstacle mask arrives transposed)
core = PursuitEvasionCore(load_params().env, num_envs=4)
core.set_state(obstacle_mask=torch.tensor([[True, False]] * 4))
core.step(torch.zeros(4, 2))
"""

# The signatures a cold main job compiled (read from the `.nbi` index files it left in
# model/__pycache__ and model/qp/__pycache__): one file per signature.
_EXPECTED = {
    "cpu_n2_kernels.solve_batch": 2, "cpu_n2_kernels.backward_batch": 2, "cbf._geometry_kernel": 2, "cbf._rows_kernel": 2,
    "cbf._barriers_kernel": 2, "cbf_beta._boxes_kernel": 1, "cbf_beta._empty_beyond_round_off": 1,
    "cbf_beta._pushed_right_sides": 1,
    "numpy_learner.rational_tanh": 1, "numpy_learner.trigamma": 1, "numpy_learner._clamped_gaussian_log_prob": 1,
    "numpy_learner._barriernet_head_grads": 1, "numpy_learner._barriernet_raw_grads": 1,
    "numpy_learner._barriernet_head_values": 1, "numpy_learner._barrier_right_sides": 1,
    "numpy_rollout._barriernet_rollout_tail": 1,
    "numpy_rollout._shielded_rollout_tail": 1, "compiled.observe_kernel": 2,
    "compiled.proximity_terms_kernel": 2, "compiled.shaping_kernel": 2, "compiled.start_draws_kernel": 2,
    "compiled.start_angles_kernel": 2, "compiled.start_robots_kernel": 2, "compiled.obstacle_candidates_kernel": 2,
    "compiled.obstacle_choice_kernel": 2, "compiled.arc_inputs_kernel": 2, "compiled.arc_kernel": 2,
    "compiled.confine_start_kernel": 2, "compiled.confine_push_kernel": 2, "compiled.confine_move_kernel": 2,
    "compiled.new_state_kernel": 2, "compiled.events_kernel": 2,
}


def _compiled(cache: Path) -> dict[str, int]:
    """{kernel: number of cached signatures} in a NUMBA_CACHE_DIR."""
    counts: dict[str, int] = {}
    for path in cache.rglob("*.nbc"):
        kernel = path.name.split("-")[0]
        counts[kernel] = counts.get(kernel, 0) + 1
    return counts


@pytest.mark.slow
def test_the_warm_up_compiles_every_signature_a_training_iteration_needs(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}
    warm = subprocess.run([sys.executable, "-m", "tasks", "warm-kernels"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert warm.returncode == 0, warm.stderr[-2000:]
    assert "warm-kernels: tanh" in warm.stdout
    after_warm_up = _compiled(tmp_path)
    assert after_warm_up == _EXPECTED

    real = subprocess.run([sys.executable, "-c", _REAL_PATHS], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert real.returncode == 0, real.stderr[-2000:]
    assert _compiled(tmp_path) == after_warm_up  # nothing compiled that the warm-up had not


# The modules whose numba loops are cached on disk (`cache=True`), and the one value a cached loop
# reads from another file: a mathematical constant, which no edit changes.
_CACHED_MODULES = ("env.compiled", "model.cbf", "model.cbf_beta", "model.numpy_learner", "model.numpy_rollout",
                   "model.qp.cpu_n2_kernels")
_CONSTANTS_FROM_ELSEWHERE = {("model.numpy_rollout", "HALF_LOG_2PI")}


def _numba_function(obj):
    """(the Python function numba compiles, whether it is cached on disk) of a numba object, else None."""
    from numba.core.caching import NullCache
    from numba.core.registry import CPUDispatcher

    if isinstance(obj, CPUDispatcher):
        return obj.py_func, not isinstance(obj._cache, NullCache)
    if type(obj).__name__ == "DUFunc":  # @vectorize
        return obj._dispatcher.py_func, not isinstance(obj._dispatcher.cache, NullCache)
    if type(obj).__name__ == "_Intrinsic":
        return obj._defn, False
    return None


def _imported_from_the_project(module) -> set[str]:
    """Names `module` imports from env/, model/ or tasks/ (`from model.x import NAME`)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(module))
    return {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            and (node.module or "").split(".")[0] in ("env", "model", "tasks") for alias in node.names}


def test_cached_numba_loops_call_only_what_their_own_file_defines():
    """numba invalidates a cached loop only when the loop's own source file changes, and it freezes
    the globals a loop reads into the cache: a helper or a value taken from another file would go
    stale in every cache after an edit there (docs/TOOLCHAIN.md). So every cached loop calls only
    numba functions defined in its own file and reads no value imported from the project."""
    import importlib

    from tasks import numerics

    numerics.apply("pinned")
    checked, crossing = 0, []
    for name in _CACHED_MODULES:
        module = importlib.import_module(name)
        imported = _imported_from_the_project(module)
        for attr, obj in vars(module).items():
            found = _numba_function(obj)
            if found is None or not found[1] or found[0].__module__ != name:
                continue
            checked += 1
            func = found[0]
            for used in func.__code__.co_names:
                value = func.__globals__.get(used)
                callee = _numba_function(value) if value is not None else None
                if callee is not None and callee[0].__module__ != name:
                    crossing.append(f"{name}.{attr} calls {callee[0].__module__}.{used}")
                elif callee is None and used in imported and (name, used) not in _CONSTANTS_FROM_ELSEWHERE:
                    crossing.append(f"{name}.{attr} reads {used}, imported from another project file")
    assert checked >= 38, checked  # every cached numba function of the six files, helpers included (38 today)
    assert not crossing, crossing
