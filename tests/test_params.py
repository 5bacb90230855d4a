"""The params schema: defaults, overrides and error messages that name key, value and what is accepted."""

import pytest
import yaml

from tasks.params import DEFAULT_PARAMS_PATH, Params, ParamsError, load_params, training_config, params_hash


def test_committed_params_yaml_equals_schema_defaults():
    # params.yaml holds every knob; its values are the reference scenario (DESIGN.md).
    raw = yaml.safe_load(DEFAULT_PARAMS_PATH.read_text())
    expected = Params().to_dict()
    # Left unset in the file on purpose: the pipeline shapes for the discount it trains with.
    expected["env"]["shaping_discount"] = None
    # Filled from the tuning study's choice (test_tuning.py checks them against results/tuning/choice.json).
    for section, key in (("train", "per_algo"), ("eval", "tuned_filter")):
        raw[section].pop(key, None)
        expected[section].pop(key)
    assert raw == expected
    p = load_params()
    assert p.env.shaping_discount == p.train.gamma
    assert (p.env.arena_size, p.env.num_obstacles, p.env.dt, p.env.max_steps) == (20.0, 2, 0.05, 600)
    assert (p.env.pursuer_v_max, p.env.pursuer_w_max, p.env.capture_radius) == (1.0, 2.84, 0.5)
    assert (p.eval.dev_episodes, p.eval.test_episodes) == (200, 500)
    assert p.train.seeds == [0, 1, 2, 3, 4]
    assert p.qp_benchmark.batch_sizes == [1, 16, 64, 256, 1024, 4096]


def test_override_is_yaml_typed():
    p = load_params(overrides=["train.seeds=[3, 4]", "train.total_steps=2048", "env.evader_policy=flee"])
    assert p.train.seeds == [3, 4] and p.train.total_steps == 2048 and p.env.evader_policy == "flee"
    p2 = load_params(overrides={"train.seeds": [3, 4], "train.total_steps": 2048, "env.evader_policy": "flee"})
    assert p2 == p


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.seed=1", ["unknown key 'train.seed'", "train.seeds"]),
        ("trian.seeds=[1]", ["unknown key 'trian.seeds'", "train.seeds"]),
        ("train.total_steps=abc", ["train.total_steps='abc'", "integer"]),
        ("env.num_obstacles=9", ["env.num_obstacles=9", "less than or equal to 8"]),
        ("env.obstacle_radius_min=-0.5", ["env.obstacle_radius_min=-0.5", "greater than 0"]),
        ("train.algos=[ppo]", ["train.algos", "'barriernet'", "'baseline'"]),
        ("eval.test_episodes=0", ["eval.test_episodes=0", "greater than or equal to 1"]),
        ("eval.episodes=200", ["eval.episodes", "replaced by eval.dev_episodes", "eval.test_episodes"]),
        ("eval.seed_base=5", ["eval.seed_base", "replaced by eval.dev_seed_base", "eval.test_seed_base"]),
        ("decision.noninferiority_margin=0", ["decision.noninferiority_margin=0", "greater than 0"]),
        ("decision.alternatives=[barriernet]", ["decision.alternatives", "barriernet", "accepted"]),
        ("decision.weights={gap: 1}", ["decision.weights", "accepted: exactly"]),
        ("decision.task_stretch=0.2", ["decision.task_stretch=0.2", "decision.task_goal=0.1"]),
        ("train.num_minibatches=7", ["train.num_minibatches=7", "divisor"]),
    ],
)
def test_bad_values_are_named(override, expected):
    with pytest.raises(ParamsError) as info:
        load_params(overrides=[override])
    for text in expected:
        assert text in str(info.value)


def test_unplaceable_obstacles_fail_at_load_with_key():
    with pytest.raises(ParamsError, match="env.num_obstacles=8"):
        load_params(overrides={"env.num_obstacles": 8, "env.obstacle_radius_max": 3.0, "env.obstacle_clearance": 2.0})


def test_unknown_key_in_file(tmp_path):
    raw = Params().to_dict()
    raw["train"]["learning_rat"] = 0.1
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"unknown key 'train.learning_rat'; did you mean 'train.learning_rate'"):
        load_params(path)


def test_malformed_override():
    with pytest.raises(ParamsError, match="not key=value"):
        load_params(overrides=["train.total_steps"])


def test_train_and_eval_seeds_must_not_overlap():
    # Training seed 20000 x 64 envs uses env seeds up to 1_280_063: past the dev base (1_000_000).
    with pytest.raises(ParamsError, match="eval.dev_seed_base=1000000"):
        load_params(overrides={"train.seeds": [20000], "train.num_envs": 64})
    # Past the dev range but reaching the test base 2_000_000.
    with pytest.raises(ParamsError, match="eval.test_seed_base=2000000"):
        load_params(overrides={"train.seeds": [40000], "train.num_envs": 64, "eval.dev_seed_base": 3_000_000})


@pytest.mark.parametrize("dev_base, dev_n, test_base, test_n, clash", [
    (1_000_000, 200, 1_000_199, 500, True),   # test starts on the last dev seed
    (1_000_000, 200, 1_000_200, 500, False),  # adjacent, disjoint
    (2_000_400, 200, 2_000_000, 500, True),   # dev inside test
    (2_000_500, 10, 2_000_000, 500, False),
])
def test_dev_and_test_splits_must_not_overlap(dev_base, dev_n, test_base, test_n, clash):
    overrides = {"eval.dev_seed_base": dev_base, "eval.dev_episodes": dev_n,
                 "eval.test_seed_base": test_base, "eval.test_episodes": test_n}
    if clash:
        with pytest.raises(ParamsError, match="eval.dev_seed_base.*overlaps the test split.*eval.test_seed_base"):
            load_params(overrides=overrides)
    else:
        p = load_params(overrides=overrides)
        assert not set(p.eval.split_range("dev")) & set(p.eval.split_range("test"))


def test_old_keys_in_a_file_are_named(tmp_path):
    raw = Params().to_dict()
    raw["eval"]["episodes"] = 200
    raw["decision"]["max_capture_loss"] = 0.05
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError) as info:
        load_params(path)
    assert "eval.episodes was replaced by eval.dev_episodes" in str(info.value)
    assert "decision.max_capture_loss was replaced by decision.noninferiority_margin" in str(info.value)


def test_training_hash_ignores_bookkeeping_keys_only():
    base = load_params()
    same = load_params(overrides={"train.checkpoint_every": 3, "train.log_every": 2})
    other = load_params(overrides={"train.total_steps": 5000})
    h = lambda p: params_hash(training_config(p, "barriernet", 0))
    assert h(base) == h(same)
    assert h(base) != h(other)
    assert params_hash(training_config(base, "barriernet", 0)) != params_hash(training_config(base, "barriernet", 1))
