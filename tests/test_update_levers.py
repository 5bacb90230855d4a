"""benchmarks/update_levers.py: its row-wise product kernel against a second implementation, and
a `--quick` run (no timing asserts: speed lives in the benchmark's output)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.helpers import same_bits

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def levers():
    spec = importlib.util.spec_from_file_location("bench_update_levers", REPO / "benchmarks" / "update_levers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_run(levers):
    """One `--quick` run with every optional section (each would otherwise redo the update and
    products tables): (printed text, returned result)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        result = levers.main(["--quick", "--skip-compile", "--repeats", "1", "--ceiling", "--tanh", "--row-linear"])
    return out.getvalue(), result


def _column_sums(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x @ w in float32 as numpy's elementwise ops compute it: for k ascending, out += x[:, k] w[k],
    one rounding per multiply and per add (the order row_products promises)."""
    out = np.zeros((x.shape[0], w.shape[1]), np.float32)
    for k in range(x.shape[1]):
        out = out + x[:, k : k + 1] * w[k]
    return out


@pytest.mark.parametrize("M,K,N", [(1024, 25, 64), (13, 64, 6), (64, 1024, 64), (3, 7, 1)])
def test_row_products_equal_the_elementwise_sums_bit_for_bit(levers, M, K, N):
    rng = np.random.default_rng(M + K + N)
    x, w = rng.standard_normal((M, K), np.float32), rng.standard_normal((K, N), np.float32)
    out = np.empty((M, N), np.float32)
    levers.row_products(x, w, out)
    assert np.array_equal(out, _column_sums(x, w))
    np.testing.assert_allclose(out, x.astype(np.float64) @ w.astype(np.float64), rtol=1e-4, atol=1e-4 * K)


def test_a_rows_result_does_not_depend_on_its_batch(levers):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((1027, 64), np.float32), rng.standard_normal((64, 64), np.float32)
    whole = np.empty((1027, 64), np.float32)
    levers.row_products(x, w, whole)
    for start, stop in ((0, 1), (5, 12), (1020, 1027), (3, 1003)):  # other groupings of four, tails
        part = np.empty((stop - start, 64), np.float32)
        levers.row_products(x[start:stop], w, part)
        assert np.array_equal(part, whole[start:stop]), (start, stop)


def test_update_products_are_each_layers_forward_and_two_backward_products(levers):
    from torch import nn

    def mlp(out):  # 25 -> 64 -> 64 -> out, as the actor and critic
        return nn.Sequential(nn.Linear(25, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, out))

    shapes = levers.update_products([mlp(2), mlp(1)], 25, 1024)
    assert len(shapes) == 2 * 3 * 3 - 2  # two MLPs, three layers, three products each; no grad of obs
    assert shapes[:3] == [(1024, 25, 64), (64, 1024, 25), (1024, 64, 64)]  # layer 1: forward, weight grad
    assert (1024, 64, 1) in shapes and (1, 1024, 64) in shapes  # the critic's head and its weight grad
    assert (1024, 64, 25) not in shapes  # the observation's gradient is never computed


def test_quick_run_prints_both_tables(quick_run):
    text, result = quick_run
    assert "| eager |" in text and "| all, per minibatch |" in text, text
    assert result["update"]["eager_ms"] > 0 and result["update"]["minibatches"] == 2
    assert all(r["rows_batch_free"] and r["err_rows"] < 1e-3 for r in result["products"])


def test_bad_repeats_is_refused_before_any_work(levers, capsys, monkeypatch):
    monkeypatch.setattr(levers, "measure_products", lambda *a, **k: pytest.fail("work started before the check"))
    with pytest.raises(SystemExit) as refused:
        levers.main(["--repeats", "0"])
    assert refused.value.code == 2 and "--repeats 0: accepted: >= 1" in capsys.readouterr().err


def test_the_op_counter_counts_what_a_hand_written_function_dispatches(levers):
    import torch

    a, b = torch.ones(3, 4), torch.ones(4, 2)
    with levers.AtenCounter() as counter:
        (torch.mm(a, b) + 1.0).tanh()
    assert counter.counts == {"mm": 1, "add": 1, "tanh": 1}


def test_the_free_stand_ins_dispatch_no_product_and_no_tanh_and_are_undone_on_exit(levers):
    import torch
    from torch import nn

    net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3), nn.Linear(3, 3, bias=False))
    x = torch.randn(7, 5)
    expected = (torch.tanh(x @ net[0].weight.T + net[0].bias) @ net[2].weight.T + net[2].bias) @ net[3].weight.T

    def ops_of_a_step():
        with levers.AtenCounter() as counter:
            out = net(x)
            out.sum().backward()
        return out, counter.counts

    out, real = ops_of_a_step()
    assert torch.allclose(out, expected) and real["addmm"] + real["mm"] >= 4 and real["tanh"] == 1
    net.zero_grad(set_to_none=True)  # so the gradients checked below are the stand-ins' own
    with levers.free_products_and_tanh():
        out, free = ops_of_a_step()
    assert out.shape == (7, 3) and free["addmm"] == free["mm"] == free["tanh"] == free["tanh_backward"] == 0
    assert all(p.grad.shape == p.shape for p in net.parameters())  # gradients of the right shapes, no bias too
    with pytest.raises(RuntimeError, match="inside"):
        with levers.free_products_and_tanh():
            raise RuntimeError("an error inside")
    assert torch.allclose(net(x), expected)  # the real forwards are back


def test_quick_ceiling_run_prints_the_iteration_table(quick_run):
    text, result = quick_run
    assert "| real |" in text and "| free |" in text and "ATen ops per real iteration" in text, text
    ceiling = result["ceiling"]
    assert ceiling["real_ms"] > 0 and ceiling["free_ms"] > 0 and ceiling["env_steps"] == 16 * 8
    # the real iteration's products and tanh are counted in both parts (the policy acts in the rollout)
    assert all(ceiling["products_and_tanh"][part] > 0 for part in ("rollout", "update"))
    assert all(ceiling["ops"][part] > ceiling["products_and_tanh"][part] for part in ("rollout", "update"))


def test_rational_tanh_against_float64_and_whatever_its_batch(levers):
    import torch

    x = np.concatenate([np.linspace(-20, 20, 40_001, dtype=np.float32),
                        np.float32([0.0, -0.0, 1e-30, -3e-4, 3.9e-4, 4e-4, 7.9, -7.9, 8.0, np.inf, -np.inf])])
    y = levers.rational_tanh(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, np.tanh(x.astype(np.float64)), rtol=0, atol=5e-7)
    tiny = np.abs(x) < 4e-4
    assert np.array_equal(y[tiny], x[tiny])  # below 4e-4 tanh(x) is x to float32 precision
    assert np.all(np.abs(y) <= 1.0) and y[-2] == -y[-1] > 0.999999
    # vector lanes and the scalar tail compute alike: a slice's answer is the whole array's
    for stop in (1, 7, 17, 1001):
        assert np.array_equal(levers.rational_tanh(x[:stop]), y[:stop]), stop
    # the same answer as ATen's tanh to a few ulp, not bit for bit: adopting it moves results
    assert not np.array_equal(y, torch.tanh(torch.from_numpy(x)).numpy())


def test_rational_tanh_gradient_is_one_minus_its_square(levers):
    import torch

    x = (torch.randn(33, 64, generator=torch.Generator().manual_seed(1)) * 2).requires_grad_()
    g = torch.randn(33, 64, generator=torch.Generator().manual_seed(2))
    y = levers._RationalTanh.apply(x)
    (y * g).sum().backward()
    expected = g.double() * (1 - y.detach().double() ** 2)  # d tanh / dx = 1 - tanh^2, by hand
    torch.testing.assert_close(x.grad.double(), expected, rtol=1e-6, atol=1e-6)
    x_ref = x.detach().double().requires_grad_()
    (torch.tanh(x_ref) * g.double()).sum().backward()  # and float64 autograd of the true tanh
    torch.testing.assert_close(x.grad.double(), x_ref.grad, rtol=0, atol=2e-6)


def test_rational_tanh_modules_replace_every_float32_tanh_and_are_undone_on_exit(levers):
    import torch
    from torch import nn

    net = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3), nn.Tanh())
    x = torch.randn(7, 5)
    before = net(x)
    with levers.rational_tanh_modules():
        with levers.AtenCounter() as counter:
            inside = net(x)
            inside.sum().backward()
        assert counter.counts["tanh"] == 0 and counter.counts["tanh_backward"] == 2
        assert same_bits(net.double()(x.double()), torch.tanh(net[2](torch.tanh(net[0](x.double())))))  # float64: ATen's
        net.float()
    torch.testing.assert_close(inside, before, rtol=0, atol=1e-6)
    assert not torch.equal(inside, before)  # another tanh was computed inside
    with pytest.raises(RuntimeError, match="inside"):
        with levers.rational_tanh_modules():
            raise RuntimeError("an error inside")
    assert same_bits(net(x), before)  # ATen's tanh is back


def test_quick_tanh_run_prints_both_tanh_tables(quick_run):
    text, result = quick_run
    assert "| ATen tanh |" in text and "| rational |" in text and "rational_tanh us" in text, text
    tanh = result["tanh"]
    assert [r["shape"] for r in tanh["calls"]] == [(64, 64), (16, 64)]  # the quick minibatch and num_envs
    assert all(r["err_rational"] < 5e-7 and r["err_aten"] < 1e-7 for r in tanh["calls"])
    assert tanh["aten_ms"] > 0 and tanh["rational_ms"] > 0 and tanh["env_steps"] == 16 * 8


@pytest.mark.parametrize("M,fan_in,fan_out", [(1024, 25, 64), (256, 64, 64), (12, 64, 64)])
def test_row_linear_gives_nn_linears_bits_forward_and_backward(levers, M, fan_in, fan_out):
    import torch
    from torch import nn

    torch.manual_seed(M + fan_in)
    layer = nn.Linear(fan_in, fan_out)
    x, g = torch.randn(M, fan_in, requires_grad=True), torch.randn(M, fan_out)

    def run(forward):
        x.grad = None
        layer.zero_grad(set_to_none=True)
        y = forward(x)
        y.backward(g)
        return y.detach(), x.grad, layer.weight.grad, layer.bias.grad

    expected = run(layer)  # ATen: addmm and its backward (MKL)
    got = run(lambda v: levers._RowLinear.apply(v, layer.weight, layer.bias))
    assert all(same_bits(a, b) for a, b in zip(expected, got))


def test_row_linear_modules_leave_the_heads_to_aten_and_are_undone_on_exit(levers):
    import torch
    from torch import nn

    net = nn.Sequential(nn.Linear(25, 64), nn.Tanh(), nn.Linear(64, 2))
    x = torch.randn(8, 25)
    with levers.row_linear_modules():
        with levers.AtenCounter() as counter:
            inside = net(x)
    assert counter.counts["addmm"] == 1  # the head (2 outputs) only: MKL's small-N path has other bits
    assert same_bits(inside, net(x))
    with pytest.raises(RuntimeError, match="inside"):
        with levers.row_linear_modules():
            raise RuntimeError("an error inside")
    with levers.AtenCounter() as counter:
        net(x)
    assert counter.counts["addmm"] == 2


def test_quick_row_linear_run_trains_the_same_weights(quick_run):
    text, result = quick_run
    assert "| row kernel |" in text and result["row_linear"]["identical"], text
