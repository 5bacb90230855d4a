"""Tiny budgets shared by the end-to-end tests: the whole pipeline in seconds on 2 CPU cores."""

TINY_PIPELINE = {
    "env.max_steps": 64,
    "train.seeds": [0],
    "train.total_steps": 256,
    "train.num_envs": 8,
    "train.rollout_steps": 16,
    "train.num_minibatches": 2,
    "train.update_epochs": 1,
    "train.checkpoint_every": 1,
    "eval.episodes": 4,
    "eval.num_envs": 4,
    "qp_benchmark.batch_sizes": [1, 4],
    "qp_benchmark.repeats": 1,
    "qp_benchmark.warmup": 0,
    "qp_benchmark.devices": ["cpu"],
    "decision.bootstrap_samples": 200,
}
