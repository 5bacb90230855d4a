"""Two levers on the PPO update, measured side by side in one process before anyone builds them.

    python benchmarks/update_levers.py                      # baseline, the default batch
    python benchmarks/update_levers.py --algo cbf_beta --repeats 5
    python benchmarks/update_levers.py --skip-compile       # no torch.compile (it compiles ~30 s)
    python benchmarks/update_levers.py --quick              # tiny batch (a smoke test)
    python benchmarks/update_levers.py --ceiling --skip-compile --repeats 5   # + the ceiling (section 3)
    python benchmarks/update_levers.py --tanh --skip-compile --repeats 5      # + a faster tanh (section 4)
    python benchmarks/update_levers.py --row-linear --skip-compile --repeats 8  # + the row kernel in training (5)

Issue 17 asks for twice the training throughput per core and names `torch.compile` and the
matrix products among the levers. Under the pinned numerics (`tasks/numerics.py`, the default)
MKL runs its COMPATIBLE (SSE2) branch, and the update's products and the backward pass are most
of an iteration. This prints, for one algorithm:

1. **The update step, eager vs compiled.** A Trainer collects one rollout (default params); then
   rounds alternate one epoch of minibatch steps as `model.ppo.ppo_update` runs them (clipped
   policy loss, clipped value loss, entropy; backward; grad clipping; fused Adam) in two ways:
   eager, and with the minibatch loss under `torch.compile` (inductor's CPU backend, which picks
   the pinned ATen capability, AVX2, for its C++). Backward runs through the compiled graph;
   clipping and Adam stay eager. The compile time is printed apart. So is the loss difference on
   the first minibatch: a compiled loss that differs in its last bits trains other weights, so
   adopting it means a rerun of every result.
2. **The update's matrix products, MKL vs a row-wise numba kernel.** Every (M, K) x (K, N)
   product of one minibatch's forward and backward: `torch.mm` (MKL; COMPATIBLE when pinned)
   against `row_products`, numba compiled for Haswell without fast-math (no FMA contraction). Each
   output row is summed over k in ascending order, four rows at a time, so a row's result
   depends on neither the batch nor the CPU. Both are checked against float64.

3. **The ceiling of every product and tanh lever** (``--ceiling``). Two Trainers of the same
   seed run whole iterations (rollout, GAE, update) alternately: one as training runs, one with
   every ``nn.Linear`` product and every ``nn.Tanh`` replaced by a free stand-in
   (`free_products_and_tanh`: outputs of the right shape, zero gradients; timing only, its
   weights learn nothing). No faster BLAS, tanh or fused kernel can beat the stand-in, so the
   ratio bounds what any such lever can give a whole iteration. It also counts the ATen ops one
   iteration dispatches in the rollout and in the update: what stays is per-op dispatch.

4. **A faster tanh** (``--tanh``). ATen's float32 tanh is the slowest elementwise op of an
   iteration (the profiler's share: about 15 %; 3-4 ns per element in both numerics modes). `rational_tanh` is
   Eigen's float tanh (``generic_fast_tanh_float``: clamp to +-7.9053, an odd degree-13 over an
   even degree-6 polynomial, one division; x itself below 4e-4) as a numba ufunc: only + * / and
   compares, no fast-math, so every x86-64 computes the same bits, and LLVM vectorises it. Its
   error is a few ulp where ATen's is under one, so adopting it moves every result (a rerun, the
   learning checked within the seed intervals). Printed: us per call at the update's and the
   rollout's shapes, the max error of each against float64, and whole iterations alternated with
   every nn.Tanh module computing `rational_tanh` (backward: ATen's tanh_backward on its output).

5. **The row kernel inside training** (``--row-linear``). Every hidden ``nn.Linear`` (8 or more
   outputs) computes its forward product and its input's gradient by `row_products`, the
   weight's and bias's gradients as ATen does (`row_linear_modules`). Printed: whether the
   actor's and critic's weights after two iterations equal training's bit for bit, and whole
   iterations alternated. A lever that moves no result, if it pays.

Nothing here changes training. Printed: the CPU model, the numerics mode and the load average,
then ms per minibatch step and us per product, with the ratios.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo (tasks, model)
sys.path.insert(0, str(Path(__file__).resolve().parent))  # side_by_side, also when loaded by file path

from tasks import numerics  # noqa: E402  (before torch: the pinned environment)

numerics.apply(numerics.mode_from_argv(sys.argv[1:]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from numba import njit  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from tasks.params import load_params  # noqa: E402

QUICK = {"train.num_envs": 16, "train.rollout_steps": 8, "train.num_minibatches": 2}


@njit(cache=False)  # no on-disk cache: tests load this file under another module name than a run does
def row_products(x, w, out):  # pragma: no cover (numba)
    """out (M, N) = x (M, K) @ w (K, N), float32. Each row: k ascending, one rounding per
    multiply and per add (no FMA without fast-math), four rows share each load of w[k]."""
    M, K = x.shape
    N = w.shape[1]
    acc = np.zeros((4, N), np.float32)
    i = 0
    while i + 4 <= M:
        acc[:] = 0.0
        for k in range(K):
            x0, x1, x2, x3 = x[i, k], x[i + 1, k], x[i + 2, k], x[i + 3, k]
            for j in range(N):
                wk = w[k, j]
                acc[0, j] += x0 * wk
                acc[1, j] += x1 * wk
                acc[2, j] += x2 * wk
                acc[3, j] += x3 * wk
        out[i : i + 4] = acc
        i += 4
    for r in range(i, M):  # the tail rows: the same order, one row at a time
        for j in range(N):
            out[r, j] = 0.0
        for k in range(K):
            xk = x[r, k]
            for j in range(N):
                out[r, j] += xk * w[k, j]


def update_products(modules: list[nn.Module], obs_dim: int, minibatch: int) -> list[tuple[int, int, int]]:
    """(M, K, N) of every matrix product one minibatch's forward and backward makes in the
    nn.Linear layers of `modules` (the actor and the critic): forward x W', backward grad_weight,
    and grad_input except for the layers that read the observation (it needs no gradient)."""
    shapes = []
    for module in modules:
        for layer in (m for m in module.modules() if isinstance(m, nn.Linear)):
            fan_in, fan_out = layer.in_features, layer.out_features
            shapes.append((minibatch, fan_in, fan_out))  # forward
            if fan_in != obs_dim:
                shapes.append((minibatch, fan_out, fan_in))  # backward: grad_input
            shapes.append((fan_out, minibatch, fan_in))  # backward: grad_weight
    return shapes


def _timed(fn: Callable[[], object], repeats: int) -> float:
    """Best of `repeats` wall seconds of fn() (after one call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def measure_products(shapes: list[tuple[int, int, int]], repeats: int) -> list[dict]:
    rows = []
    gen = torch.Generator().manual_seed(0)
    for M, K, N in dict.fromkeys(shapes):  # each distinct shape once, in order
        x, w = torch.randn(M, K, generator=gen), torch.randn(K, N, generator=gen)
        out = np.empty((M, N), np.float32)
        xn, wn = x.numpy(), w.numpy()
        loops = max(1, 200_000 // (M * K * N // 1000 + 1))
        t_mkl = _timed(lambda: [torch.mm(x, w) for _ in range(loops)], repeats) / loops
        t_rows = _timed(lambda: [row_products(xn, wn, out) for _ in range(loops)], repeats) / loops
        exact = x.double() @ w.double()
        row_products(xn, wn, out)
        err_rows = float((torch.from_numpy(out).double() - exact).abs().max())
        err_mkl = float((torch.mm(x, w).double() - exact).abs().max())
        head = np.empty((min(M, 8), N), np.float32)
        row_products(xn[: head.shape[0]], wn, head)  # the first rows alone: same bits?
        rows.append({"shape": (M, K, N), "mkl_us": t_mkl * 1e6, "rows_us": t_rows * 1e6, "err_mkl": err_mkl,
                     "err_rows": err_rows, "rows_batch_free": bool(np.array_equal(head, out[: head.shape[0]])),
                     # MKL's answer bit for bit: a kernel that matches it is a lever that moves no result
                     "rows_equal_mkl": bool(np.array_equal(out, torch.mm(x, w).numpy()))})
    return rows


def minibatch_loss(actor, critic, cfg):
    """The minibatch loss of `model.ppo.ppo_update` (its forward passes, then `ppo_losses`) as one
    function: what torch.compile gets."""
    from model.ppo import ppo_losses

    def loss(obs, inputs, sample, old_log_prob, advantages, returns, old_value):
        new_log_prob, entropy = actor.evaluate_actions(obs, inputs.safety, sample, qp_hint=inputs.qp_hint,
                                                       cbf_geometry=inputs.cbf_geometry)
        new_value = critic(obs).float()
        return ppo_losses(new_log_prob, entropy, new_value, old_log_prob, advantages, returns, old_value, cfg).loss

    return loss


def measure_update(algo: str, overrides: dict, repeats: int, compile_loss: bool) -> dict:
    from numpy_update import rollout_batch  # one rollout, GAE and minibatch slices, as ppo_update draws them

    trainer, batch, slices = rollout_batch(algo, overrides)
    agent, tp = trainer.agent, trainer.params.train
    optimizer = agent.optimizer
    params_ = [p for group in optimizer.param_groups for p in group["params"]]
    eager = minibatch_loss(agent.actor, agent.critic, trainer.update_cfg)
    minibatch = trainer.minibatch_size

    def args(idx):  # the minibatch's rows, gathered as ppo_update gathers them
        (obs, *rows), inputs = batch.index(idx)
        return (obs, inputs, *rows)

    def epoch(loss_fn) -> None:
        for idx in slices:
            loss = loss_fn(*args(idx))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params_, tp.max_grad_norm)
            optimizer.step()

    result = {"minibatches": len(slices), "minibatch": minibatch,
              "products": update_products([agent.actor, agent.critic], batch.rows[0].shape[1], minibatch)}
    ways = {"eager": eager}
    if compile_loss:
        compiled = torch.compile(eager)
        with torch.no_grad():
            first_eager = eager(*args(slices[0]))
        start = time.perf_counter()
        first_compiled = compiled(*args(slices[0]))
        first_compiled.backward()  # the backward graph compiles on first use too
        optimizer.zero_grad(set_to_none=True)
        result["compile_s"] = time.perf_counter() - start
        result["loss_diff"] = float((first_compiled.detach() - first_eager).abs())
        ways["compiled"] = compiled
    best = {name: float("inf") for name in ways}
    for _ in range(repeats):  # alternate, so a drift in the machine's load reaches both
        for name, fn in ways.items():
            start = time.perf_counter()
            epoch(fn)
            best[name] = min(best[name], time.perf_counter() - start)
    result.update({f"{name}_ms": best[name] / len(slices) * 1e3 for name in ways})
    return result


class _FreeLinear(torch.autograd.Function):
    """x (..., in), weight (out, in), bias (out,) or None -> (..., out) filled with a constant;
    backward gives zero gradients for x and weight and the bias its usual sum: no matrix product
    either way."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.x_shape, ctx.weight_shape, ctx.has_bias = x.shape, weight.shape, bias is not None
        return x.new_full((*x.shape[:-1], weight.shape[0]), 0.01)

    @staticmethod
    def backward(ctx, grad):
        bias_grad = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias else None
        return grad.new_zeros(ctx.x_shape), grad.new_zeros(ctx.weight_shape), bias_grad


class _FreeTanh(torch.autograd.Function):
    """The identity in both directions: a tanh that costs nothing."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


@contextlib.contextmanager
def free_products_and_tanh():
    """Inside: every nn.Linear and nn.Tanh module of this process computes nothing (see
    `_FreeLinear`, `_FreeTanh`). Timing only. The original forwards are back on exit, also
    after an error."""
    linear_forward, tanh_forward = nn.Linear.forward, nn.Tanh.forward
    nn.Linear.forward = lambda self, x: _FreeLinear.apply(x, self.weight, self.bias)
    nn.Tanh.forward = lambda self, x: _FreeTanh.apply(x)
    try:
        yield
    finally:
        nn.Linear.forward, nn.Tanh.forward = linear_forward, tanh_forward


# Eigen's float tanh as a numba ufunc (model/numpy_learner.py, which the NumPy learner uses)
from model.numpy_learner import rational_tanh  # noqa: E402


class _RationalTanh(torch.autograd.Function):
    """x (...) float32 -> rational_tanh(x); backward: ATen's tanh_backward (grad (1 - y^2)) on
    the output, as nn.Tanh's own backward."""

    @staticmethod
    def forward(ctx, x):
        y = torch.empty_like(x, memory_format=torch.contiguous_format)
        rational_tanh(x.detach().contiguous().numpy(), out=y.numpy())
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


@contextlib.contextmanager
def rational_tanh_modules():
    """Inside: every nn.Tanh module of this process computes `rational_tanh` (float32; other
    dtypes keep ATen's). The original forward is back on exit, also after an error."""
    tanh_forward = nn.Tanh.forward
    nn.Tanh.forward = lambda self, x: _RationalTanh.apply(x) if x.dtype == torch.float32 else tanh_forward(self, x)
    try:
        yield
    finally:
        nn.Tanh.forward = tanh_forward


ROW_LINEAR_MIN_OUT = 8  # MKL's addmm takes another path for the heads (2 or 1 outputs): other bits


class _RowLinear(torch.autograd.Function):
    """nn.Linear on x (M, in) float32: the forward product and the input's gradient by
    `row_products` (MKL's bits where the products table says so), the bias added after the
    product as addmm does; the weight's and the bias's gradients as ATen computes them."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        out = torch.empty(x.shape[0], weight.shape[0])
        row_products(x.detach().contiguous().numpy(), weight.detach().t().contiguous().numpy(), out.numpy())
        if bias is not None:
            out += bias.detach()
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.empty(grad.shape[0], weight.shape[1])
            row_products(grad.contiguous().numpy(), weight.detach().contiguous().numpy(), grad_x.numpy())
        grad_weight = grad.t().mm(x)
        return grad_x, grad_weight, grad.sum(0) if ctx.has_bias else None


@contextlib.contextmanager
def row_linear_modules():
    """Inside: every nn.Linear module of this process on a 2-D float32 input runs `_RowLinear`
    (others keep ATen's). The original forward is back on exit, also after an error."""
    linear_forward = nn.Linear.forward

    def forward(self, x):
        if x.dim() == 2 and x.dtype == torch.float32 and self.out_features >= ROW_LINEAR_MIN_OUT:
            return _RowLinear.apply(x, self.weight, self.bias)
        return linear_forward(self, x)

    nn.Linear.forward = forward
    try:
        yield
    finally:
        nn.Linear.forward = linear_forward


def row_linear_identical(algo: str, overrides: dict, iterations: int = 2) -> bool:
    """Do two Trainers of the same seed, one inside `row_linear_modules`, hold the same actor and
    critic weights bit for bit after `iterations` whole iterations?"""
    from tasks.train import Trainer

    params = load_params(overrides={"train.total_steps": 10**7, "train.learner": "torch", **overrides})  # torch's levers
    # each Trainer runs right after it is built: building one seeds the global RNG that the
    # rollout's sampling draws from
    real = Trainer(params, algo, 0, update_device="cpu")
    for _ in range(iterations):
        real.train_one_update()
    with row_linear_modules():
        rows = Trainer(params, algo, 0, update_device="cpu")
        for _ in range(iterations):
            rows.train_one_update()
    pairs = [(real.actor, rows.actor), (real.critic, rows.critic)]
    return all(torch.equal(a, b) for x, y in pairs for a, b in zip(x.state_dict().values(), y.state_dict().values()))


def measure_tanh(shapes: list[tuple[int, int]], repeats: int) -> list[dict]:
    """us per call of ATen's tanh and `rational_tanh` on float32 inputs of each shape (values
    N(0, 2^2): the range a hidden layer sees), with each one's max error against float64."""
    rows = []
    gen = torch.Generator().manual_seed(0)
    for shape in shapes:
        x = torch.randn(shape, generator=gen) * 2
        out = torch.empty_like(x)
        xn, outn = x.numpy(), out.numpy()
        loops = max(1, 2_000_000 // x.numel())
        t_aten = _timed(lambda: [torch.tanh(x) for _ in range(loops)], repeats) / loops
        t_rational = _timed(lambda: [rational_tanh(xn, out=outn) for _ in range(loops)], repeats) / loops
        exact = x.double().tanh()
        rows.append({"shape": shape, "aten_us": t_aten * 1e6, "rational_us": t_rational * 1e6,
                     "err_aten": float((torch.tanh(x).double() - exact).abs().max()),
                     "err_rational": float((torch.from_numpy(rational_tanh(xn)).double() - exact).abs().max())})
    return rows


class AtenCounter(TorchDispatchMode):
    """Counts the ATen ops dispatched while active (`counts`: op name -> calls)."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.counts[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def count_iteration_ops(trainer) -> dict[str, collections.Counter]:
    """ATen ops of one iteration of `trainer`, split into its rollout and the rest (GAE, update):
    the rollout is counted alone, then a whole iteration, and the first is subtracted."""
    with AtenCounter() as rollout:
        trainer.collect_rollout()
    with AtenCounter() as whole:
        trainer.train_one_update()
    return {"rollout": rollout.counts, "update": whole.counts - rollout.counts}


def alternate_iterations(algo: str, overrides: dict, repeats: int, other: Callable) -> tuple[object, dict, int]:
    """Two Trainers of the same seed, one as training runs and one inside the context `other()`
    (built and run inside it), one whole iteration each in turn, `repeats` rounds after a warm-up
    iteration, so a drift in the machine's load reaches both. Returns (the real Trainer, best ms
    of {"real", "other"}, env steps per iteration)."""
    from tasks.train import Trainer

    params = load_params(overrides={"train.total_steps": 10**7, "train.learner": "torch", **overrides})  # torch's levers
    real = Trainer(params, algo, 0, update_device="cpu")
    with other():
        changed = Trainer(params, algo, 0, update_device="cpu")
    ways = {"real": (real, contextlib.nullcontext), "other": (changed, other)}
    for trainer, context in ways.values():  # warm-up: allocations, lazy init
        with context():
            trainer.train_one_update()
    best = {name: float("inf") for name in ways}
    for _ in range(repeats):
        for name, (trainer, context) in ways.items():
            with context():
                start = time.perf_counter()
                trainer.train_one_update()
                best[name] = min(best[name], time.perf_counter() - start)
    return real, {name: ms * 1e3 for name, ms in best.items()}, params.train.num_envs * params.train.rollout_steps


def measure_ceiling(algo: str, overrides: dict, repeats: int) -> dict:
    """Whole iterations, as training runs them against `free_products_and_tanh`, alternated:
    best ms of each, and the ATen ops per iteration of the real one (see the module docstring)."""
    real, best, steps = alternate_iterations(algo, overrides, repeats, free_products_and_tanh)
    ops = count_iteration_ops(real)
    return {"real_ms": best["real"], "free_ms": best["other"], "env_steps": steps,
            "ops": {part: sum(c.values()) for part, c in ops.items()},
            "products_and_tanh": {part: sum(c[n] for n in ("mm", "addmm", "tanh", "tanh_backward"))
                                  for part, c in ops.items()}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algo", default="baseline", choices=("baseline", "barriernet", "cbf_beta", "shielded"))
    parser.add_argument("--repeats", type=int, default=3, help="rounds of each way (the best is kept)")
    parser.add_argument("--skip-compile", action="store_true", help="eager only (no ~30 s compile)")
    parser.add_argument("--quick", action="store_true", help="a tiny batch: a smoke test, not a measurement")
    parser.add_argument("--ceiling", action="store_true",
                        help="also time whole iterations with every product and tanh made free (section 3)")
    parser.add_argument("--tanh", action="store_true",
                        help="also time ATen's tanh against a vectorised rational tanh, alone and in whole iterations (section 4)")
    parser.add_argument("--row-linear", action="store_true",
                        help="also time whole iterations with the hidden layers' products by the row kernel (section 5)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="a params override, e.g. numerics.mode=native")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: accepted: >= 1")
    from side_by_side import cpu_model, parse_sets

    overrides = {**(QUICK if args.quick else {}), **parse_sets(args.sets)}
    torch.set_num_threads(1)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"{cpu_model()}, numerics {os.environ.get(numerics.MARKER)}, ATen {torch.backends.cpu.get_cpu_capability()}, "
          f"torch {torch.__version__}, 1 thread, load average {load}"
          + (" [--quick: tiny batch, ratios are not meaningful]" if args.quick else ""))

    update = measure_update(args.algo, overrides, args.repeats, not args.skip_compile)
    print(f"\n{args.algo}: one minibatch step ({update['minibatch']} states; loss, backward, clip, Adam), "
          f"best of {args.repeats} epochs of {update['minibatches']}")
    print("| way | ms per minibatch | vs eager |\n|---|---|---|")
    print(f"| eager | {update['eager_ms']:.2f} | 1.00x |")
    if "compiled_ms" in update:
        print(f"| torch.compile (loss + its backward) | {update['compiled_ms']:.2f} | "
              f"{update['eager_ms'] / update['compiled_ms']:.2f}x |")
        print(f"compile: {update['compile_s']:.1f} s; |compiled - eager| loss on the first minibatch: "
              f"{update['loss_diff']:.3g}")

    shapes = update["products"]
    products = measure_products(shapes, args.repeats)
    total_mkl = sum(r["mkl_us"] * shapes.count(r["shape"]) for r in products)
    total_rows = sum(r["rows_us"] * shapes.count(r["shape"]) for r in products)
    print(f"\nthe update's matrix products (float32), one minibatch: {len(shapes)} products")
    print("| M x K x N | count | torch.mm (MKL) us | row_products us | MKL / rows | max err MKL | max err rows "
          "| rows batch-free | rows = MKL bits |\n|---|---|---|---|---|---|---|---|---|")
    for r in products:
        M, K, N = r["shape"]
        print(f"| {M} x {K} x {N} | {shapes.count(r['shape'])} | {r['mkl_us']:.1f} | {r['rows_us']:.1f} | "
              f"{r['mkl_us'] / r['rows_us']:.2f}x | {r['err_mkl']:.1e} | {r['err_rows']:.1e} | "
              f"{'yes' if r['rows_batch_free'] else 'NO'} | {'yes' if r['rows_equal_mkl'] else 'no'} |")
    print(f"| all, per minibatch | {len(shapes)} | {total_mkl / 1e3:.2f} ms | {total_rows / 1e3:.2f} ms | "
          f"{total_mkl / total_rows:.2f}x | | | | |")
    print(f"products' share of the eager minibatch step: MKL {total_mkl / 1e3 / update['eager_ms']:.0%}")
    result = {"update": update, "products": products}
    if args.ceiling:
        ceiling = measure_ceiling(args.algo, overrides, args.repeats)
        print(f"\n{args.algo}: whole iterations ({ceiling['env_steps']} env steps: rollout, GAE, update), best of "
              f"{args.repeats}, alternated; 'free': every nn.Linear product and nn.Tanh replaced by a stand-in "
              "that computes nothing (timing only)")
        print("| iteration | ms | env-steps/s | vs real |\n|---|---|---|---|")
        for name in ("real", "free"):
            ms = ceiling[f"{name}_ms"]
            print(f"| {name} | {ms:.0f} | {ceiling['env_steps'] / ms * 1e3:,.0f} | {ceiling['real_ms'] / ms:.2f}x |")
        ops, heavy = ceiling["ops"], ceiling["products_and_tanh"]
        print(f"ATen ops per real iteration: rollout {ops['rollout']:,} ({heavy['rollout']:,} products and tanh), "
              f"GAE + update {ops['update']:,} ({heavy['update']:,}); 'vs real' of 'free' bounds every product, "
              "tanh or BLAS lever: the rest is those ops' dispatch and the Python around them")
        result["ceiling"] = ceiling
    if args.tanh:
        tp = load_params(overrides=overrides).train
        calls = measure_tanh([(update["minibatch"], tp.hidden_sizes[0]), (tp.num_envs, tp.hidden_sizes[0])], args.repeats)
        print("\ntanh, float32, one call (the update's and the rollout's hidden activations)")
        print("| shape | ATen tanh us | rational_tanh us | ATen / rational | max err ATen | max err rational |\n"
              "|---|---|---|---|---|---|")
        for r in calls:
            print(f"| {r['shape'][0]} x {r['shape'][1]} | {r['aten_us']:.1f} | {r['rational_us']:.1f} | "
                  f"{r['aten_us'] / r['rational_us']:.2f}x | {r['err_aten']:.1e} | {r['err_rational']:.1e} |")
        _, best, steps = alternate_iterations(args.algo, overrides, args.repeats, rational_tanh_modules)
        print(f"\n{args.algo}: whole iterations ({steps} env steps), best of {args.repeats}, alternated; 'rational': "
              "every nn.Tanh module computes rational_tanh (other weights: a timing, not a result)")
        print("| iteration | ms | env-steps/s | vs ATen tanh |\n|---|---|---|---|")
        for label, name in (("ATen tanh", "real"), ("rational", "other")):
            print(f"| {label} | {best[name]:.0f} | {steps / best[name] * 1e3:,.0f} | {best['real'] / best[name]:.2f}x |")
        result["tanh"] = {"calls": calls, "aten_ms": best["real"], "rational_ms": best["other"], "env_steps": steps}
    if args.row_linear:
        identical = row_linear_identical(args.algo, overrides)
        _, best, steps = alternate_iterations(args.algo, overrides, args.repeats, row_linear_modules)
        print(f"\n{args.algo}: whole iterations ({steps} env steps), best of {args.repeats}, alternated; 'row kernel': "
              f"every hidden nn.Linear's forward and input-gradient products by row_products; weights after two "
              f"iterations {'identical to' if identical else 'DIFFERENT from'} training's")
        print("| iteration | ms | env-steps/s | vs MKL |\n|---|---|---|---|")
        for label, name in (("MKL", "real"), ("row kernel", "other")):
            print(f"| {label} | {best[name]:.0f} | {steps / best[name] * 1e3:,.0f} | {best['real'] / best[name]:.2f}x |")
        result["row_linear"] = {"identical": identical, "mkl_ms": best["real"], "rows_ms": best["other"], "env_steps": steps}
    return result


if __name__ == "__main__":
    main()
