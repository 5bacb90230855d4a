"""Smoke test of benchmarks/train_throughput.py: `--quick` runs every item and prints the table.

No timing asserts (speed lives in the benchmark's own output); the checks are on what was
measured: the rows, the env-steps each row must have done (computed from the configuration),
positive rates, the ratio lines, and clear errors for bad arguments.
"""

from __future__ import annotations

import importlib.util
import math
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

# The module-scoped fixtures below run once: every test of this module goes to one xdist worker.
pytestmark = pytest.mark.xdist_group("test_benchmarks_smoke")

REPO = Path(__file__).resolve().parent.parent


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load("train_throughput")


def _table_rows(text: str, names: list[str]) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if cells and cells[0] in names:
            rows[cells[0]] = cells
    return rows


@pytest.fixture(scope="module")
def quick_run(bench):
    """One `--quick` run of the whole benchmark (module-scoped: it is the slow part)."""
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        results = bench.main(["--quick"])
    return results, out.getvalue()


def test_quick_run_prints_every_row_with_the_planned_budget(bench, quick_run):
    results, text = quick_run
    ours = [bench.ROW_BASELINE, bench.ROW_THROUGH_QP, bench.ROW_NOMINAL]
    names = ours + [bench.ROW_REFERENCE, bench.ROW_SB3]
    rows = _table_rows(text, names)
    for name in ours + [bench.ROW_REFERENCE]:
        assert name in rows, f"row {name!r} missing from:\n{text}"

    # env-steps done = iterations x batch, from the quick configuration (not from the benchmark's output)
    q = bench.QUICK_OURS
    ours_batch = q["train.num_envs"] * q["train.rollout_steps"]
    for name in ours:
        iters, steps = int(rows[name][1]), int(rows[name][2].replace(",", ""))
        assert (iters, steps) == (1, ours_batch), rows[name]
    ref_steps = 1 * bench.QUICK_REFERENCE["train.rollout_steps"]  # one env
    assert int(rows[bench.ROW_REFERENCE][2]) == ref_steps
    assert "qpth" in rows[bench.ROW_REFERENCE][-1] and "1 env" in rows[bench.ROW_REFERENCE][-1]

    for name, m in results.items():
        assert m.seconds > 0 and math.isfinite(m.sps) and m.sps > 0, (name, m)
        rate = float(_table_rows(text, [name])[name][4].replace(",", ""))
        assert rate == pytest.approx(m.steps / m.seconds, rel=0.01, abs=1)

    assert re.search(r"BarrierNet through_qp / reference design: [\d,.]+x \(target >= 50x", text), text
    assert re.search(r"BarrierNet through_qp absolute: [\d,]+ env-steps/s", text), text
    sb3_ok, _ = bench.sb3_available()
    if sb3_ok:
        assert bench.ROW_SB3 in rows
        assert int(rows[bench.ROW_SB3][2]) == bench.QUICK_SB3["n_steps"]  # learn() does whole rollouts
        assert re.search(r"baseline PPO / Stable-Baselines3 PPO: [\d,.]+x \(target >= 10x", text), text
    else:
        assert "Stable-Baselines3 PPO: skipped" in text
        assert "baseline PPO / Stable-Baselines3 PPO: n/a" in text


def test_ratio_lines_follow_the_measurements(bench):
    fast = bench.Measurement("a", "", 1, 1000, 1.0, 0.0)
    slow = bench.Measurement("b", "", 1, 1000, 40.0, 0.0)
    assert "40.0x (target >= 50x: below)" in bench._ratio_line("r", fast, slow, "b", 50)
    assert "40.0x (target >= 10x: meets)" in bench._ratio_line("r", fast, slow, "b", 10)
    assert "n/a (b not measured)" in bench._ratio_line("r", fast, None, "b", 10)


def _profile_shares(text: str) -> dict[str, float]:
    """{part: seconds} from a `profile_iteration` breakdown table."""
    shares = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) == 3 and cells[2].endswith("%"):
            shares[cells[0]] = float(cells[1])
    return shares


def _assert_timing_wrappers_removed() -> None:
    import model.cbf_beta
    import model.ppo
    import torch

    assert model.ppo.ppo_update.__module__ == "model.ppo"
    assert model.ppo.collect_rollout.__module__ == "model.ppo"
    assert model.cbf_beta.safe_box_arrays.__qualname__ == "safe_box_arrays"
    assert torch.Tensor.backward.__qualname__ == "Tensor.backward"
    import model.numpy_learner
    import model.qp.cpu_n2_kernels

    assert model.numpy_learner.ProjectionQP.__call__.__qualname__ == "ProjectionQP.__call__"
    assert type(model.qp.cpu_n2_kernels.solve_batch).__name__ == "CPUDispatcher"  # the numba loop itself
    from scipy import special

    assert type(model.cbf._rows_kernel).__name__ == "CPUDispatcher"
    assert type(model.cbf_beta._boxes_kernel).__name__ == "CPUDispatcher"
    assert isinstance(special.gammaln, np.ufunc) and isinstance(special.digamma, np.ufunc)
    assert type(torch._sample_dirichlet).__name__ == "builtin_function_or_method"


def _assert_qp_free_bound(text: str) -> None:
    """The "QPs taking no time" line: its ratio is the measured one with the QPs' timed share of the
    iteration taken out, so it can only be higher, and it is what the baseline's iteration over the
    rest gives, at most 1 unless the measured ratio is above 1 (noise at these tiny sizes; CI once
    measured BarrierNet at 1.03x): recomputed from the printed milliseconds, to their rounding."""
    import re

    measured = re.search(r"takes (-?[\d.]+) ms more \(([\d.]+)x;", text)
    baseline_ms = float(re.search(r"beyond the baseline's ([\d.]+) ms", text).group(1))
    free = re.search(r"with its QPs taking no time at all \(([\d.]+) ms .* would run at ([\d.]+)x the baseline", text)
    assert measured and free, text
    extra_ms, ratio = float(measured.group(1)), float(measured.group(2))
    qp_ms, free_ratio = float(free.group(1)), float(free.group(2))
    assert free_ratio >= ratio
    expected = max(ratio, baseline_ms / max(baseline_ms + extra_ms - qp_ms, baseline_ms))
    assert free_ratio == pytest.approx(expected, abs=0.01 + 0.2 * expected / baseline_ms)


def _assert_kernel_floor(text: str) -> None:
    """The "own kernels alone" line: its total is its three parts, and its ratio is the baseline's
    iteration over itself plus that total, recomputed from the printed milliseconds."""
    baseline_ms = float(re.search(r"beyond the baseline's ([\d.]+) ms", text).group(1))
    line = re.search(r"its own kernels alone \(the QP loop ([\d.]+) ms, its backward ([\d.]+) ms, .* draws ([\d.]+) ms\) "
                     r"took ([\d.]+) ms in the timed iteration; .* would run at ([\d.]+)x", text)
    assert line, text
    loop, backward, other, total, ratio = (float(g) for g in line.groups())
    assert total == pytest.approx(loop + backward + other, abs=0.15)
    assert ratio == pytest.approx(baseline_ms / (baseline_ms + total), abs=0.006)


def test_kernel_floor_ratio_is_the_baseline_over_itself_plus_the_kernels(bench):
    assert bench.kernel_floor_ratio(0.1, 0.0) == 1.0
    assert bench.kernel_floor_ratio(0.1143, 0.0105) == pytest.approx(0.9159, abs=1e-4)  # BarrierNet, 2026-12-06


def test_qp_free_ratio_is_the_baseline_over_the_rest_capped_at_one_and_never_below_the_measured(bench):
    assert bench.qp_free_ratio(1.2, 1.0, 0.1) == pytest.approx(1.0 / 1.1)  # 0.83x measured, 0.91x without QPs
    assert bench.qp_free_ratio(1.2, 1.0, 0.5) == 1.0  # the QPs' timed share exceeds the whole gap
    assert bench.qp_free_ratio(0.97, 1.0, 0.1) == pytest.approx(1.0 / 0.97)  # noise: measured faster stays

@pytest.mark.parametrize("learner", ["torch", "numpy"])
def test_profile_breakdown_adds_up(bench, learner):
    from tasks.params import load_params

    params = bench._with(load_params(), {**bench.QUICK_OURS, "train.total_steps": 10_000, "train.learner": learner})
    text = bench.profile_iteration(params, "barriernet", top=5)
    shares = _profile_shares(text)
    total = shares["iteration (rollout + GAE + update)"]
    # the phases partition the iteration; the parts of a phase fit inside it
    assert shares["rollout"] + shares["update"] + shares["other (GAE, buffer flatten, LR, sync)"] == pytest.approx(total, abs=2e-3)
    assert shares["rollout: actor forward"] + shares["rollout: env step"] <= shares["rollout"]
    assert "allows" in text and "the compiled QP loop alone took" in text  # the 0.9x budget line
    _assert_qp_free_bound(text)
    _assert_kernel_floor(text)
    if learner == "numpy":  # the NumPy forward and update: the QP on arrays, no torch backward
        # (printed to the millisecond: a tiny configuration's QP may read 0.000)
        assert shares["rollout: QP projection (cbf rows excluded)"] <= shares["rollout: actor forward"]
        assert shares["update: QP projection (cbf rows excluded)"] + shares["update: backward, QP KKT (python part)"] \
            <= shares["update"]
        assert "update: backward (all)" not in shares and "update: actor evaluate_actions" not in shares
        assert "cProfile" in text
        _assert_timing_wrappers_removed()
        return
    assert shares["rollout: QP projection (cbf rows excluded)"] <= shares["rollout: actor forward"]
    assert shares["update: QP projection (cbf rows excluded)"] <= shares["update: actor evaluate_actions"]
    assert 0 < shares["update: backward (all)"] <= shares["update"]
    if "update: backward, QP KKT (python part)" in shares:  # the exact backend's closed-form backward
        assert shares["update: backward, QP KKT (python part)"] <= shares["update: backward (all)"]
    assert "cProfile" in text and "ncalls" in text
    _assert_timing_wrappers_removed()


def test_cbf_beta_profile_shows_its_safety_layer_inside_the_rollout(bench):
    """CBF-Beta's rows and safe box are timed inside its rollout forward (the update scores the
    rollout's recorded boxes: no box is built there)."""
    from tasks.params import load_params

    params = bench._with(load_params(), {**bench.QUICK_OURS, "train.total_steps": 10_000})
    text = bench.profile_iteration(params, "cbf_beta", top=5)
    shares = _profile_shares(text)
    assert "one cbf_beta iteration" in text
    rows, box = shares["rollout: CBF-Beta rows (cbf_rows)"], shares["rollout: CBF-Beta safe box (centre QPs + chords)"]
    assert 0 < rows and 0 < box and rows + box <= shares["rollout: actor forward"] <= shares["rollout"]
    assert not any(k.startswith("update: CBF-Beta") for k in shares), shares
    _assert_qp_free_bound(text)
    _assert_kernel_floor(text)
    assert "the safety layer's other kernels" not in shares  # a bound's input, not a row of the table
    _assert_timing_wrappers_removed()


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "accepted: >= 1"),
    (["--threads", "-1"], "accepted: 0"),
    (["--set", "train.num_envz=4"], "train.num_envs"),
])
def test_bad_arguments_are_named(bench, argv, message, capsys):
    from tasks.params import ParamsError

    with pytest.raises((SystemExit, ParamsError)) as info:
        bench.main(argv)
    text = str(info.value) + capsys.readouterr().err
    assert message in text


def test_gpu_benchmark_skips_cleanly_without_cuda(capsys):
    import importlib.util
    from pathlib import Path

    import torch

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_throughput.py"
    spec = importlib.util.spec_from_file_location("gpu_throughput", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if torch.cuda.is_available():
        assert module.main(["--quick"]) == 0
        assert "qpth/exact" in capsys.readouterr().out
    else:
        assert module.main([]) == 0
        assert "no CUDA device" in capsys.readouterr().out


def test_side_by_side_against_a_commit_alternates_both_checkouts(tmp_path, monkeypatch):
    side_by_side = _load("side_by_side")
    quick = {"train.num_envs": 8, "train.rollout_steps": 32, "train.num_minibatches": 2, "train.update_epochs": 2}
    # the interpreter as a path relative to the caller's folder (a venv put on PATH by a relative
    # entry): the children run in the checkouts' folders, where it must still be found
    interpreter = Path(sys.executable)
    monkeypatch.chdir(interpreter.parent)
    monkeypatch.setattr(sys, "executable", f"./{interpreter.name}")
    text = side_by_side.compare("HEAD", ["baseline"], 4, quick, snapshots=tmp_path, processes=2)
    # the commit's tracked files were unpacked, and nothing half-written is left
    (snapshot,) = tmp_path.iterdir()
    assert (snapshot / "tasks" / "train.py").is_file() and not snapshot.name.endswith(".partial")
    assert "2 pair(s) of child processes x 2 alternating rounds (ABBA order) of 256 env-steps" in text
    assert "95 % CI over 2 process pairs (t interval)" in text
    cpu = side_by_side.shared_cpu()
    if cpu is not None:  # both children ran on the one shared CPU (Linux)
        assert f"children on CPU(s) old [{cpu}] / new [{cpu}]" in text, text
    row = _table_rows(text, ["baseline"])["baseline"]
    old_sps, new_sps, ratio = (float(c.replace(",", "").rstrip("x")) for c in row[1:4])
    assert old_sps > 0 and new_sps > 0 and math.isclose(ratio, new_sps / old_sps, rel_tol=0.02)
    low, high = (float(x) for x in re.fullmatch(r"\[([0-9.]+), ([0-9.]+)\]", row[4]).groups())
    assert low <= round(ratio, 2) <= high
    with pytest.raises(SystemExit, match="no-such-commit"):
        side_by_side.compare("no-such-commit", ["baseline"], 1, quick, snapshots=tmp_path)


def test_side_by_sides_interval_covers_a_known_speed_ratio_where_each_process_has_its_own_speed():
    """`speed_ratio` on simulated runs with a known truth: per-round seconds with a shared drift (a
    round's two sides slowed alike, up to 1.5x), 3 % noise per round, and each child process's own
    lasting speed (3 % either way), as measured on the 2-core EPYC. A candidate 5 % faster, 4
    process pairs of 12 rounds: the t interval over the pairs holds 1.05 in at least 90 % of 200
    runs, and so does the A/A pair's hold 1.0. One process pair of 48 rounds, resampled by rounds,
    holds the truth far less often (the process spread is not in it: why the benchmark runs several).
    Without the process spread, the round bootstrap holds 1.05 in at least 88 %, and resampling its
    columns unpaired would widen it past 1.0 (checked by hand). The ratio is the sums' ratio."""
    side_by_side = _load("side_by_side")
    rng = np.random.default_rng(3)
    runs = 200

    def simulate(truth, processes, rounds, process_spread):
        reference, candidate = [], []
        for _ in range(processes):
            drift = 1.0 + 0.5 * rng.random(rounds)
            own_ref, own_cand = rng.lognormal(0.0, process_spread, 2)
            reference.append(list(0.12 * own_ref * drift * rng.lognormal(0.0, 0.03, rounds)))
            candidate.append(list(0.12 / truth * own_cand * drift * rng.lognormal(0.0, 0.03, rounds)))
        return reference, candidate

    held = {}
    for case, (processes, rounds, spread) in {"pairs": (4, 12, 0.03), "one pair": (1, 48, 0.03),
                                              "one pair, no spread": (1, 48, 0.0)}.items():
        for truth in (1.05, 1.0):
            hits = 0
            for _ in range(runs):
                reference, candidate = simulate(truth, processes, rounds, spread)
                ratio, low, high, what = side_by_side.speed_ratio(reference, candidate)
                assert ratio == pytest.approx(sum(map(sum, reference)) / sum(map(sum, candidate)))
                hits += low <= truth <= high
            held[case, truth] = hits
    assert held["pairs", 1.05] >= 0.9 * runs and held["pairs", 1.0] >= 0.9 * runs, held
    assert held["one pair", 1.05] <= 0.75 * runs and held["one pair", 1.0] <= 0.75 * runs, held
    assert held["one pair, no spread", 1.05] >= 0.88 * runs and held["one pair, no spread", 1.0] >= 0.88 * runs, held
    with pytest.raises(ValueError, match="same shape"):
        side_by_side.speed_ratio([[0.1, 0.2]], [[0.1]])


def test_parallel_efficiency_in_dask_workers_shows_the_nannys_malloc_setting(capsys):
    """`--dask` runs the cells in a stock local cluster and in one made as the flow makes it:
    the table names MALLOC_TRIM_THRESHOLD_ as each set of workers saw it (65536 from Dask's
    nanny, unset in the flow's), every efficiency is a positive percentage of the solo rate, and
    the ratio line is the two clusters' summed rates."""
    bench = _load("parallel_efficiency")
    bench.main(["--quick", "--iterations", "1", "--cells", "2", "--dask"])
    out = capsys.readouterr().out
    rows = {line.split("|")[0].strip(): [part.strip() for part in line.split("|")[1:]]
            for line in out.splitlines() if line.count("|") == 3}
    stock = [name for name in rows if name.startswith("Dask's stock nanny (MALLOC_TRIM_THRESHOLD_ 65536)")]
    flow = [name for name in rows if name.startswith("the flow's workers (MALLOC_TRIM_THRESHOLD_ unset)")]
    assert len(stock) == 2 and len(flow) == 2, out
    rates = {name: float(values[0].replace(",", "")) for name, values in rows.items() if name != "run"}
    assert all(rate > 0 for rate in rates.values()) and "solo, bare process" in rates
    ratio = float(re.search(r"the flow's workers / Dask's stock nanny: ([0-9.]+)x", out).group(1))
    assert ratio == pytest.approx(sum(rates[n] for n in flow) / sum(rates[n] for n in stock), abs=0.006)


def test_eval_throughput_quick_times_both_ways_on_the_same_episodes(capsys):
    """benchmarks/eval_throughput.py --quick: one freshly trained cell evaluated with ended episodes
    dropped and kept; both ways must give the same episode rows (the benchmark checks it, and so
    does this test, on what it returned and printed)."""
    eval_bench = _load("eval_throughput")
    rows = eval_bench.main(["--quick", "--algos", "barriernet", "--rounds", "1"])
    text = capsys.readouterr().out
    assert [r["algo"] for r in rows] == ["barriernet"]
    row = rows[0]
    assert row["same_rows"] is True
    assert row["dropped_s"] > 0 and row["kept_s"] > 0
    assert row["ratio"] == pytest.approx(row["kept_s"] / row["dropped_s"])
    assert 1 <= row["mean_length"] <= row["max_steps"] == eval_bench.QUICK_OVERRIDES["env.max_steps"]
    printed = [[c.strip() for c in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| barriernet")]
    assert len(printed) == 1 and printed[0][3] == f"{row['ratio']:.2f}x" and printed[0][5] == "yes"
    assert "CPU:" in text
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        eval_bench.main(["--rounds", "0"])
    assert refused.value.code == 2 and "--rounds 0: accepted: an integer >= 1" in capsys.readouterr().err


def test_env_throughput_quick_prints_the_compiled_and_the_torch_core_side_by_side(capsys, monkeypatch):
    """benchmarks/env_throughput.py --quick: one row per size with the compiled core's rate, the
    torch core's and their ratio (computed from the printed rates), and the CPU named."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))  # as when the script runs
    _load("env_throughput").main(["--quick", "--sizes", "8", "32"])
    text = capsys.readouterr().out
    rows = [[c.strip() for c in line.split("|")] for line in text.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["8", "32"]
    for row in rows:
        compiled, torch_rate = float(row[1].replace(",", "")), float(row[3].replace(",", ""))
        assert compiled > 0 and torch_rate > 0
        assert float(row[4].rstrip("x")) == pytest.approx(compiled / torch_rate, abs=0.006)
    assert _load("side_by_side").cpu_model() in text.splitlines()[0]


def test_phase_split_puts_the_update_in_its_column(bench, monkeypatch):
    """--phases on an update made 20 ms slower (a known truth): the update column holds the 20 ms
    and the rollout+GAE column does not (each phase's minimum is at most its share of the fastest
    whole iteration, so rollout+GAE <= iteration - 20 ms); what 0.9x allows is read off the
    baseline's printed iteration. Afterwards the update is the one it found."""
    import model.ppo

    real = model.ppo.ppo_update

    def slow(*args, **kwargs):
        time.sleep(0.02)
        return real(*args, **kwargs)

    monkeypatch.setattr(model.ppo, "ppo_update", slow)
    base = bench._with(bench.load_params(), bench.QUICK_OURS)
    text = bench.phase_split(bench._with(base, bench._budget_overrides(base, 1)), repeats=2)
    rows = _table_rows(text, list(bench.PHASE_ALGOS))
    assert list(rows) == list(bench.PHASE_ALGOS), text
    for algo, cells in rows.items():
        rest, update, whole = (float(c) for c in cells[1:4])  # ms, printed to 0.1
        assert update >= 20.0 and 0 < rest <= whole - 20.0 + 0.1 + 1e-6, cells
    allowed = float(re.search(r"allows ([\d.]+) ms", text).group(1))
    baseline = float(rows["baseline"][3])
    assert allowed == pytest.approx(baseline / bench.TARGET_SAFE_VS_BASELINE - baseline, abs=0.15)
    assert model.ppo.ppo_update is slow


def test_trigamma_exhaustive_walks_every_float32_of_its_range(capsys, monkeypatch):
    """The walk covers each float32 once (the count of [1, 1 + 2^-10) is 2^13: 2^23 in a binade,
    the first 2^-10 of it), finds none that differ, and refuses a range below 1."""
    exhaustive = _load("trigamma_exhaustive")
    exhaustive.main(["--low", "1", "--high", str(1 + 2**-10)])
    out = capsys.readouterr().out
    assert "8,192 values, 0 differ" in out, out
    # [3, 3 + 2^-18) holds 16 float32 (their spacing in [2, 4) is 2^-22), in chunks of 7, 7 and 2
    assert exhaustive.compare(3.0, 3.0 + 2**-18, chunk=7)[:2] == (16, 0)
    # and it sees a difference: one ulp more at every x from 3.5 on
    import model.numpy_learner as learner

    right = learner.trigamma
    monkeypatch.setattr(learner, "trigamma", lambda x: np.where(x >= 3.5, np.nextafter(right(x), np.float32(1)), right(x)))
    assert exhaustive.compare(3.0, 4.0)[:2] == (2**22, 2**21)
    with pytest.raises(SystemExit):
        exhaustive.main(["--low", "0.5"])
    assert "need 1 <= low < high" in capsys.readouterr().err


def test_live_logging_prints_both_ways_and_they_leave_the_same_files(capsys, tmp_path):
    """The table has a row per run length with positive times, and the two ways it times write
    byte-identical live directories (the records are the same; only the syncs differ)."""
    live_logging = _load("live_logging")
    rows = live_logging.main(["--updates", "3", "7", "--repeats", "1", "--algo", "baseline"])
    out = capsys.readouterr().out
    assert [n for n, *_ in rows] == [3, 7] and all(every > 0 and sparse > 0 for _, every, sparse in rows), rows
    assert re.search(r"^\s+7 \|\s+[\d.]+ \|\s+[\d.]+ \| [\d.]+x$", out, re.M), out

    record = live_logging.one_record("baseline")
    live_logging.log_run(record, 7, 128, None, tmp_path / "every")
    live_logging.log_run(record, 7, 128, 3, tmp_path / "sparse")
    files = sorted(p.relative_to(tmp_path / "every") for p in (tmp_path / "every").rglob("*") if p.is_file())
    logged = [k for k, v in record.items() if k != "global_step" and v is not None and math.isfinite(v)]
    assert len(files) == len(logged) + 1 and Path("metrics.json") in files  # a curve per metric, and the summary
    for name in files:
        assert (tmp_path / "every" / name).read_bytes() == (tmp_path / "sparse" / name).read_bytes(), name
    with pytest.raises(SystemExit):
        live_logging.main(["--updates", "0"])
