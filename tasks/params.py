"""The params schema: every knob of the pipeline, validated before any work starts.

`load_params(path, overrides)` reads ``params.yaml``, applies ``--set a.b=value`` overrides
(YAML-typed, so ``--set train.seeds=[0,1]`` gives a list) and validates the result with
pydantic. Every error names the dotted key, the bad value and what would be accepted; an
unknown key also names the nearest valid key.

Defaults reproduce the reference scenario ("Phase 2.5", ../shared/DESIGN.md).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import math
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, ValidationError, field_validator, model_validator

from model.config import BarrierNetParams, CBFParams  # re-exported: model/ owns the cbf and barriernet sections
from env.config import REMOVED_KEYS as REMOVED_ENV_KEYS
from env.config import EnvParams  # re-exported: env/ owns the env section
from tasks.artifacts import ARMS, SPLITS  # noqa: F401  re-exported: the stages' contract owns the arm vocabulary

DEFAULT_PARAMS_PATH = Path(__file__).resolve().parent.parent / "params.yaml"


class ParamsError(ValueError):
    """A params file or override is invalid; the message names the key and what is accepted."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class AlgoSettings(_Section):
    """One algorithm's own values of the tuned knobs (None: the shared value of the train /
    barriernet section). Filled by the equal-effort tuning study (tasks/tuning.py)."""

    learning_rate: float | None = Field(None, gt=0, lt=1, description="replaces train.learning_rate")
    ent_coef: float | None = Field(None, ge=0, description="replaces train.ent_coef")
    init_log_std: float | None = Field(None, description="replaces train.init_log_std (Gaussian policies only)")
    exploration_std: list[float] | None = Field(
        None, min_length=2, max_length=2, description="replaces barriernet.exploration_std (barriernet only)"
    )

    def overrides(self) -> dict[str, Any]:
        """The set knobs as dotted params keys -> value."""
        section = {"learning_rate": "train", "ent_coef": "train", "init_log_std": "train", "exploration_std": "barriernet"}
        return {f"{section[k]}.{k}": v for k, v in self.model_dump().items() if v is not None}


# Which tuned knob each algorithm's policy actually has (an entropy bonus on BarrierNet's fixed-std
# Gaussian has no gradient; CBF-Beta has no log-std): a setting an algorithm cannot use is refused.
ALGO_KNOBS = {
    "barriernet": ("learning_rate", "ent_coef", "exploration_std"),
    "baseline": ("learning_rate", "ent_coef", "init_log_std"),
    "cbf_beta": ("learning_rate", "ent_coef"),
    "shielded": ("learning_rate", "ent_coef", "init_log_std"),
}


class PerAlgoSettings(_Section):
    """train.per_algo: per-algorithm settings chosen by the tuning study (reports/tuning/tuning_report.md)."""

    barriernet: AlgoSettings = AlgoSettings()
    baseline: AlgoSettings = AlgoSettings()
    cbf_beta: AlgoSettings = AlgoSettings()
    shielded: AlgoSettings = AlgoSettings()

    @model_validator(mode="after")
    def _usable(self) -> "PerAlgoSettings":
        for algo, knobs in ALGO_KNOBS.items():
            unusable = [k for k, v in getattr(self, algo).model_dump().items() if v is not None and k not in knobs]
            if unusable:
                raise ValueError(
                    f"train.per_algo.{algo}.{unusable[0]} is set, but {algo} has no such knob; accepted for {algo}: "
                    f"{', '.join(knobs)}"
                )
        return self


class TrainParams(_Section):
    """PPO training: equal budgets for every algorithm and seed (CleanRL-style defaults)."""

    algos: list[Literal["barriernet", "baseline", "cbf_beta", "shielded"]] = Field(
        ["barriernet", "baseline", "cbf_beta", "shielded"], min_length=1,
        description="cbf_beta: Beta policy on a safe box (issue 15); shielded: the baseline with the post-hoc "
        "filter (cbf.form, cbf.filter_gamma) inside the training loop",
    )
    seeds: list[int] = Field(
        [0, 1, 2, 3, 4], min_length=1, description="training seeds (issue 16: >= 5 for a seed-level interval; their "
        "env seeds lie below eval.dev_seed_base and eval.test_seed_base)"
    )
    total_steps: int = Field(1_000_000, ge=1, description="env steps per (algo, seed)")
    num_envs: int = Field(256, ge=1, le=65536, description="envs stepped together in the rollout")
    rollout_steps: int = Field(32, ge=1, description="steps per env per rollout (batch = num_envs * rollout_steps)")
    num_minibatches: int = Field(8, ge=1)
    update_epochs: int = Field(5, ge=1)
    learning_rate: float = Field(3e-4, gt=0, lt=1)
    anneal_lr: bool = True
    gamma: float = Field(0.995, gt=0, le=1, description="discount (0.995: a 10 s horizon at dt 0.05, beyond a typical chase)")
    gae_lambda: float = Field(0.95, ge=0, le=1)
    clip_coef: float = Field(0.2, gt=0)
    clip_vloss: bool = True
    ent_coef: float = Field(0.0, ge=0)
    vf_coef: float = Field(0.5, ge=0)
    max_grad_norm: float = Field(0.5, gt=0)
    target_kl: float | None = Field(None, gt=0)
    hidden_sizes: list[int] = Field([64, 64], min_length=1)
    init_log_std: float = Field(
        -1.0, description="baseline's initial state-independent log-std in normalised units "
        "(-1.0: std (0.18 m/s, 1.04 rad/s), near BarrierNet's fixed exploration_std)"
    )
    norm_obs: bool = True
    rollout_device: Literal["cpu", "cuda"] = "cpu"
    update_device: Literal["auto", "cpu", "cuda"] = "auto"
    mixed_precision: bool = Field(True, description="autocast + GradScaler on CUDA only")
    checkpoint_every: int = Field(10, ge=1, description="updates between checkpoints")
    torch_threads: int = Field(1, ge=0, description="intra-op threads; 1 is fastest for these small nets (0: torch default)")
    learner: Literal["torch", "numpy"] = Field(
        "numpy", description="numpy: the PPO update (model/numpy_learner.py) and a CPU rollout's actor and critic "
        "forward (model/numpy_rollout.py) as whole-array NumPy calls, 1.7-1.9x faster training on the CPU, CPU "
        "updates only (update_device auto means cpu); torch: autograd and Adam on any device (the GPU paths)"
    )
    log_every: int = Field(1, ge=1, description="updates between logged points")
    per_algo: PerAlgoSettings = Field(
        PerAlgoSettings(), description="per-algorithm learning rate / exploration, chosen by the tuning study "
        "(python -m tasks tune); unset knobs take the shared values above"
    )

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, value: list[int]) -> list[int]:
        if len(set(value)) != len(value):
            raise ValueError(f"train.seeds={value} has duplicates; accepted: distinct integers")
        if any(s < 0 for s in value):
            raise ValueError(f"train.seeds={value} has a negative seed; accepted: integers >= 0")
        return value

    @field_validator("algos")
    @classmethod
    def _unique_algos(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError(f"train.algos={value} has duplicates")
        return value

    @field_validator("hidden_sizes")
    @classmethod
    def _positive_sizes(cls, value: list[int]) -> list[int]:
        if any(h <= 0 for h in value):
            raise ValueError(f"train.hidden_sizes={value} must be positive integers")
        return value

    @model_validator(mode="after")
    def _batch(self) -> "TrainParams":
        batch = self.num_envs * self.rollout_steps
        if batch % self.num_minibatches:
            raise ValueError(
                f"train.num_minibatches={self.num_minibatches} does not divide the rollout batch "
                f"num_envs*rollout_steps={batch}; accepted: a divisor of {batch}"
            )
        return self

    @property
    def batch_size(self) -> int:
        return self.num_envs * self.rollout_steps

    @property
    def minibatch_size(self) -> int:
        return self.batch_size // self.num_minibatches

    @property
    def num_updates(self) -> int:
        return max(1, math.ceil(self.total_steps / self.batch_size))


# Keys that were renamed: loading one names its replacement (an unknown-key hint could mislead).
RENAMED_KEYS = {
    "eval.seed_base": "eval.dev_seed_base (tuning episodes) and eval.test_seed_base (held-out episodes)",
    "eval.episodes": "eval.dev_episodes (tuning episodes) and eval.test_episodes (held-out episodes)",
    "decision.max_capture_loss": "decision.noninferiority_margin (capture non-inferiority, step 1 of the verdict)",
}


class FilterSweepParams(_Section):
    """The post-hoc filter sweep (issue 15 item 5, tasks/evaluate.py `sweep_filters`): every (form,
    gamma, robust margin) on the checkpoints of ``algos``, played on the DEV episodes only; the rule
    below picks one configuration per baseline checkpoint, the arm ``baseline_tuned_filter``."""

    enabled: bool = Field(True, description="run the sweep (and the arm baseline_tuned_filter) in the evaluate stage")
    algos: list[Literal["baseline", "cbf_beta"]] = Field(
        ["baseline", "cbf_beta"], description="checkpoints swept (cbf_beta: its unconstrained policy, for the Pareto "
        "figure; only the baseline's choice becomes an arm)"
    )
    forms: list[Literal["dcbf", "ct", "dcbf_exact"]] = Field(
        ["dcbf", "dcbf_exact"], min_length=1, description="filter forms (ct at gamma is dcbf at gamma * dt: "
        "listing both only renames gamma)"
    )
    gammas: list[float] = Field(
        [0.05, 0.2, 1.0], min_length=1, description="class-K gammas (dcbf forms: per-step fraction in "
        "(0, 1]; ct: rate in 1/s). The default grid (12 configurations with the forms and margins) costs about a "
        "minute per swept checkpoint on one core; e.g. [0.01, 0.05, 0.2, 0.5, 1.0] x margins [0, 0.05, 0.1] is the "
        "fuller sweep (30 configurations)"
    )
    robust_margins: list[float] = Field([0.0, 0.05], min_length=1, description="clearance margins (m, >= 0)")
    max_collision_upper: float = Field(
        0.05, gt=0, le=1, description="selection rule: among configurations whose dev collision rate's Wilson "
        "upper bound is at most this, the highest dev capture rate (ties: fewer interventions, then grid order); "
        "none qualifies: the lowest upper bound"
    )
    confidence: float = Field(0.95, gt=0.5, lt=1, description="level of that Wilson interval")

    @model_validator(mode="after")
    def _grid(self) -> "FilterSweepParams":
        for name in ("algos", "forms", "gammas", "robust_margins"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"eval.filter_sweep.{name}={values} repeats an entry; accepted: distinct entries")
        if any(not (math.isfinite(g) and g > 0) for g in self.gammas):
            raise ValueError(f"eval.filter_sweep.gammas={self.gammas} has a non-positive entry; accepted: > 0")
        if any(g > 1 for g in self.gammas) and set(self.forms) & {"dcbf", "dcbf_exact"}:
            raise ValueError(
                f"eval.filter_sweep.gammas={self.gammas} has an entry above 1, which forms {self.forms} refuse "
                "(a dcbf gamma is a per-step fraction); accepted: gammas in (0, 1], or forms [ct] only"
            )
        if any(not (math.isfinite(m) and m >= 0) for m in self.robust_margins):
            raise ValueError(f"eval.filter_sweep.robust_margins={self.robust_margins}; accepted: metres >= 0")
        return self


class TunedFilter(_Section):
    """One post-hoc filter configuration (a row of the filter sweep's grid)."""

    form: Literal["dcbf", "ct", "dcbf_exact"]
    gamma: float = Field(gt=0, description="class-K gamma (dcbf forms: per-step fraction in (0, 1]; ct: rate in 1/s)")
    robust_margin: float = Field(ge=0, description="clearance margin (m)")

    @model_validator(mode="after")
    def _gamma(self) -> "TunedFilter":
        if self.form != "ct" and self.gamma > 1:
            raise ValueError(f"eval.tuned_filter.gamma={self.gamma} exceeds 1 for form {self.form}; accepted: (0, 1]")
        return self


class EvalParams(_Section):
    """Auto-evaluation: paired episodes, deterministic actions."""

    # Two splits of scenarios (env seeds). Dev: every choice made by looking at results (the
    # filter sweep, the best-alternative rule, hyper-parameters) cites dev numbers only. Test:
    # held out; the headline numbers and the verdict come from it alone. The old single range
    # (1_000_000 + 0..199) was looked at while tuning, so it is the dev split now.
    dev_seed_base: int = Field(1_000_000, ge=0, description="dev episode e uses env seed dev_seed_base + e")
    dev_episodes: int = Field(200, ge=1, description="dev (tuning) episodes per (arm, seed)")
    test_seed_base: int = Field(2_000_000, ge=0, description="test episode e uses env seed test_seed_base + e")
    test_episodes: int = Field(
        500, ge=1, description="held-out test episodes per (arm, seed); a study needs >= decision.min_test_episodes "
        "(fewer: the report marks the run a pipeline check, not a result)"
    )
    num_envs: int = Field(
        8192, ge=1, description="most envs stepped together: a cell's arms and splits (and the sweep's filters) share "
        "batched envs of up to this many episodes; results do not depend on it (tasks/evaluate.py play_groups)"
    )
    arms: list[Literal[ARMS]] = Field(list(ARMS), min_length=1)  # type: ignore[valid-type]  (tasks/artifacts.py)
    trajectory_episode: int = Field(0, ge=0, description="episode drawn as trajectories in the report")
    filter_sweep: FilterSweepParams = FilterSweepParams()
    tuned_filter: TunedFilter | None = Field(
        None, description="the post-hoc filter of arm baseline_tuned_filter, one configuration for every seed, chosen "
        "by the tuning study on dev episodes (python -m tasks tune); null: each seed's evaluate stage picks one "
        "from its own dev sweep (eval.filter_sweep's rule)"
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        # An old params file must fail loudly, not silently fall back to the defaults.
        if isinstance(data, Mapping):
            old = [k for k in RENAMED_KEYS if k.startswith("eval.") and k.split(".", 1)[1] in data]
            if old:
                raise ValueError("; ".join(f"eval.{k.split('.', 1)[1]} was replaced by {RENAMED_KEYS[k]}" for k in old))
        return data

    def split_range(self, split: str) -> range:
        """The env seeds of a split ('dev' or 'test'): episode e uses env seed base + e."""
        if split == "dev":
            return range(self.dev_seed_base, self.dev_seed_base + self.dev_episodes)
        if split == "test":
            return range(self.test_seed_base, self.test_seed_base + self.test_episodes)
        raise ValueError(f"split={split!r}; accepted: 'dev' or 'test'")


SCENARIOS = (
    "open_field", "obstacle_between", "near_boundary", "cornered", "high_speed_obstacle", "head_on",
    "corridor_tight", "corridor_passable", "boundary_wrap", "obstacle_shadow", "multi_obstacle_4",
    "multi_obstacle_8", "speed_mismatch", "fleeing_evader", "disturbance",
)  # fmt: skip
"""Named evaluation scenarios of the stage `scenarios` (geometry in tasks/scenarios.py)."""


class ScenariosParams(_Section):
    """Named scenarios (tasks/scenarios.py): a fixed geometry each, played by every arm on the same
    episodes, which differ only in the evader's env seed and a small start-pose jitter."""

    episodes: int = Field(50, ge=1, le=10_000, description="episodes per scenario (one batched core each)")
    seeds: list[int] = Field(
        [0], min_length=1, description="training seeds whose checkpoints play the scenarios (those in train.seeds)"
    )
    seed_base: int = Field(
        3_000_000, ge=0, description="scenario episode e uses env seed seed_base + e (evader randomness); disjoint "
        "from the training env seeds and the eval splits"
    )
    jitter: float = Field(
        0.2, ge=0, le=0.5, description="start-pose jitter: each start x, y (m) and heading (rad) moves by a uniform "
        "draw in [-jitter, jitter] (what makes episodes of a deterministic evader differ)"
    )
    names: list[Literal[SCENARIOS]] = Field(list(SCENARIOS), min_length=1, description="scenarios to run")
    actuation_noise: float = Field(
        0.1, ge=0, le=1, description="disturbance scenario: std of Gaussian noise on the pursuer's executed (v, w), "
        "as a fraction of (pursuer_v_max, pursuer_w_max)"
    )
    speed_bias: float = Field(
        0.1, ge=-0.5, le=0.5, description="disturbance scenario: the pursuer drives (1 + speed_bias) times the "
        "commanded speed (> 0: faster than the safety layer assumes)"
    )
    gif_frames: int = Field(
        30, ge=2, le=150, description="frames of each scenario's animated GIF (report stage; 8 arms: about 0.3 s of CPU each)"
    )

    @field_validator("names", "seeds")
    @classmethod
    def _unique(cls, value: list, info: Any) -> list:
        if len(set(value)) != len(value):
            raise ValueError(f"scenarios.{info.field_name}={value!r} repeats an entry; accepted: distinct entries")
        return value


class QPBenchmarkParams(_Section):
    batch_sizes: list[int] = Field([1, 16, 64, 256, 1024, 4096], min_length=1)
    repeats: int = Field(5, ge=1, description="timed calls per cell (median reported); 20 is the fuller sweep, at "
                         "about 4x the stage's time")
    warmup: int = Field(1, ge=0)
    obstacle_counts: list[int] = Field([2, 8], min_length=1)
    dtypes: list[Literal["float64", "float32"]] = Field(["float64", "float32"], min_length=1)
    devices: list[Literal["cpu", "cuda"]] = Field(["cpu", "cuda"], description="cuda is skipped when absent")
    qpth_max_batch: int = Field(1024, ge=1, description="skip qpth above this batch (seconds per call there)")

    @field_validator("batch_sizes", "obstacle_counts")
    @classmethod
    def _positive(cls, value: list[int]) -> list[int]:
        if any(v < 0 for v in value):
            raise ValueError(f"{value} has a negative entry")
        return value


# Arms the decision may name before their code lands (issue 15 adds them); validation of
# `decision.alternatives` accepts these so a params file can be written ahead of the code.
DECISION_ARMS = (
    "barriernet", "baseline", "baseline_ct_filter", "baseline_dcbf_filter", "baseline_tuned_filter",
    "cbf_beta", "cbf_beta_rcbf", "shielded", "barriernet_rcbf",
)


class DecisionParams(_Section):
    """The decision protocol (tasks/decision.py): a fixed sequence of tests on held-out test
    episodes, the best alternative chosen on dev, the Phase 2.5 gates, outcome and matrix.

    Written down before the run; docs/DECISION.md explains every rule.
    """

    min_collision_reduction: float = Field(
        0.01, ge=0, le=1, description="step 1: a safe arm must cut the collision rate by at least this (rate units)"
    )
    noninferiority_margin: float = Field(
        0.03, gt=0, le=1, description="step 1: capture may drop by less than this vs the baseline (rate units)"
    )
    equivalence_margin: float = Field(
        0.02, gt=0, le=1, description="step 2: BarrierNet and the best alternative are equivalent when the capture "
        "difference's interval lies within +/- this"
    )
    confidence: float = Field(
        0.95, gt=0.5, lt=1, description="two-sided interval level; 1 - confidence is the family-wise error of the "
        "fixed sequence (each one-sided test runs at (1 - confidence) / 2)"
    )
    alternative_rule: Literal["highest_dev_capture"] = Field(
        "highest_dev_capture", description="how the best alternative is chosen, on dev episodes only: the highest "
        "dev capture among decision.alternatives present whose dev collision upper bound <= alternative_max_collision"
    )
    alternatives: list[str] = Field(
        ["baseline_tuned_filter", "cbf_beta_rcbf", "shielded", "baseline_dcbf_filter", "baseline_ct_filter"],
        min_length=1, description="safe alternatives to BarrierNet (arms absent from the episodes are skipped)",
    )
    alternative_max_collision: float = Field(
        0.01, gt=0, le=1, description="an alternative qualifies when its dev collision rate's Clopper-Pearson upper "
        "bound is at most this"
    )
    min_test_episodes: int = Field(
        400, ge=1, description="fewer test episodes than this: the report marks the run a pipeline check, not a study"
    )
    max_unsafe_episodes: int = Field(
        0, ge=0, description="PG-02: test episodes with a collision or a body-barrier violation the chosen approach "
        "may have"
    )
    gap_goal: float = Field(0.05, gt=0, le=1, description="target: train-deploy gap below this (goal)")
    gap_stretch: float = Field(0.02, gt=0, le=1, description="target: train-deploy gap below this (stretch)")
    task_goal: float = Field(0.10, gt=0, le=1, description="target: relative capture loss vs the baseline (goal)")
    task_stretch: float = Field(0.05, gt=0, le=1, description="target: relative capture loss vs the baseline (stretch)")
    overhead_goal: float = Field(5.0, gt=1, description="target: BarrierNet training wall-clock / CBF-Beta's (goal)")
    overhead_stretch: float = Field(3.0, gt=1, description="target: the same ratio (stretch)")
    infeasible_goal: float = Field(0.05, gt=0, le=1, description="target: BarrierNet QP-infeasible steps (goal)")
    infeasible_stretch: float = Field(0.01, gt=0, le=1, description="target: the same (stretch)")
    plateau_window: float = Field(
        0.2, gt=0, le=0.5, description="PG-05: the last this fraction of BarrierNet's learning curve is compared with "
        "the window before it"
    )
    plateau_tolerance: float = Field(
        0.02, gt=0, le=1, description="PG-05: converged when the two windows' mean training capture differ by <= this"
    )
    open_case: Literal["matrix"] = Field(
        "matrix", description="outcome when the plan's rules do not decide (gap < goal with overhead < goal, gap > "
        "goal with overhead > goal, or an uncertain gap): the safe approach with the higher decision-matrix total"
    )
    hybrid_rule: Literal["fixes_safety"] = Field(
        "fixes_safety", description="outcome C: BarrierNet would be chosen but fails PG-02 while BarrierNet + RCBF "
        "filter passes it with capture non-inferior within noninferiority_margin"
    )
    weights: dict[str, float] = Field(
        {"gap": 30.0, "safety": 25.0, "task": 20.0, "training_speed": 15.0, "complexity": 10.0},
        description="decision-matrix weights (percent)",
    )
    bootstrap_samples: int = Field(2000, ge=100, description="replicates of the probability-of-improvement interval")
    bootstrap_seed: int = Field(0, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "max_capture_loss" in data:
            raise ValueError(f"decision.max_capture_loss was replaced by {RENAMED_KEYS['decision.max_capture_loss']}")
        return data

    @field_validator("alternatives")
    @classmethod
    def _known_alternatives(cls, value: list[str]) -> list[str]:
        bad = [a for a in value if a not in DECISION_ARMS or a in ("barriernet", "baseline")]
        if bad:
            accepted = [a for a in DECISION_ARMS if a not in ("barriernet", "baseline")]
            raise ValueError(f"decision.alternatives has {bad}; accepted: arms among {accepted}")
        if len(set(value)) != len(value):
            raise ValueError(f"decision.alternatives={value} has duplicates")
        return value

    @field_validator("weights")
    @classmethod
    def _matrix_weights(cls, value: dict[str, float]) -> dict[str, float]:
        expected = {"gap", "safety", "task", "training_speed", "complexity"}
        if set(value) != expected:
            raise ValueError(f"decision.weights has keys {sorted(value)}; accepted: exactly {sorted(expected)}")
        if any(not math.isfinite(w) or w < 0 for w in value.values()) or sum(value.values()) <= 0:
            raise ValueError(f"decision.weights={value}: weights must be finite, >= 0, and not all 0")
        return value

    @model_validator(mode="after")
    def _ordered(self) -> "DecisionParams":
        for stretch, goal in (("gap_stretch", "gap_goal"), ("task_stretch", "task_goal"),
                              ("overhead_stretch", "overhead_goal"), ("infeasible_stretch", "infeasible_goal")):
            if getattr(self, stretch) > getattr(self, goal):
                raise ValueError(
                    f"decision.{stretch}={getattr(self, stretch)} is looser than decision.{goal}={getattr(self, goal)}; "
                    "accepted: stretch <= goal"
                )
        return self


class OrchestrationParams(_Section):
    retries: int = Field(2, ge=0)
    retry_delay_seconds: float = Field(2.0, ge=0)
    stage_timeout_seconds: float = Field(6 * 3600, gt=0)
    dask_address: str | None = Field(None, description="existing Dask scheduler; None: a local cluster")
    dask_workers: int = Field(2, ge=1)
    # StrictBool: a YAML typo such as `dvc_push: 1` or "yes" is refused, not read as true.
    dvc_push: StrictBool = Field(False, description="after the run, `dvc push` its DVC-tracked outputs to the "
                                 "default remote of .dvc/config (core.remote); the run fails if the push does")


class NumericsParams(_Section):
    """Floating-point reproducibility across machines (tasks/numerics.py says what each mode sets)."""

    mode: Literal["pinned", "native"] = Field(
        "pinned", description="pinned: every CPU-dependent kernel fixed to AVX2 (MKL COMPATIBLE branch), the same "
        "weights on any x86-64 machine with AVX2; native: the host's fastest kernels, results depend on the CPU"
    )


class GPUParams(_Section):
    min_free_mb: int = Field(1024, ge=0)
    poll_seconds: float = Field(5.0, gt=0)
    wait_timeout_seconds: float = Field(600.0, ge=0)
    on_timeout: Literal["fallback_cpu", "fail"] = "fallback_cpu"
    min_minibatch: int = Field(64, ge=1)


class ExplorationGrid(_Section):
    """Each algorithm's exploration knob and its values in the tuning study (first value: the shared
    default). Every algorithm gets the same number of values: equal tuning effort."""

    barriernet: list[list[float]] = Field(
        [[0.3, 0.6], [0.5, 1.0]], min_length=1, description="barriernet.exploration_std values (fixed std, v and w)"
    )
    baseline: list[float] = Field([-1.0, -0.5], min_length=1, description="train.init_log_std values")
    cbf_beta: list[float] = Field(
        [0.0, 0.01], min_length=1, description="train.ent_coef values (the Beta has no std parameter; its entropy "
        "bonus is its exploration knob)"
    )
    shielded: list[float] = Field([-1.0, -0.5], min_length=1, description="train.init_log_std values")

    KNOB: ClassVar[dict[str, str]] = {"barriernet": "exploration_std", "baseline": "init_log_std",
                                      "cbf_beta": "ent_coef", "shielded": "init_log_std"}

    @model_validator(mode="after")
    def _equal(self) -> "ExplorationGrid":
        sizes = {algo: len(getattr(self, algo)) for algo in self.KNOB}
        if len(set(sizes.values())) != 1:
            raise ValueError(
                f"tuning.exploration has {sizes} values per algorithm; accepted: the same number for every algorithm "
                "(equal tuning effort)"
            )
        for algo in self.KNOB:
            values = [json.dumps(v) for v in getattr(self, algo)]
            if len(set(values)) != len(values):
                raise ValueError(f"tuning.exploration.{algo}={getattr(self, algo)} repeats a value; accepted: distinct values")
        if any(len(v) != 2 or min(v) <= 0 for v in self.barriernet):
            raise ValueError(f"tuning.exploration.barriernet={self.barriernet}; accepted: pairs of positive stds (v, w)")
        if min(self.cbf_beta) < 0:
            raise ValueError(f"tuning.exploration.cbf_beta={self.cbf_beta}; accepted: entropy coefficients >= 0")
        return self


class TuningParams(_Section):
    """The equal-effort tuning study (tasks/tuning.py, `python -m tasks tune`; issue 15 item 7): every
    algorithm trains learning_rates x its exploration values, each on every tuning seed, for
    total_steps; one rule judges all of them on the dev episodes. Run once; the choice goes to
    train.per_algo (and the baseline's filter to eval.tuned_filter)."""

    algos: list[Literal["barriernet", "baseline", "cbf_beta", "shielded"]] = Field(
        ["barriernet", "baseline", "cbf_beta", "shielded"], min_length=1
    )
    seeds: list[int] = Field(
        [100, 101], min_length=1, description="training seeds of the study (apart from train.seeds: the study's "
        "models are not the evaluated ones)"
    )
    total_steps: int = Field(262_144, ge=1, description="env steps per configuration and seed (about a quarter of "
                                                           "train.total_steps: tuning at full budget would cost 4x)")
    learning_rates: list[float] = Field([3e-4, 1e-3], min_length=1, description="train.learning_rate values")
    exploration: ExplorationGrid = ExplorationGrid()
    rule: Literal["dev_capture_minus_collision"] = Field(
        "dev_capture_minus_collision", description="score of a configuration: dev capture rate minus dev collision "
        "rate, averaged over the tuning seeds; the highest wins, ties go to the earlier configuration (defaults first)"
    )
    workers: int = Field(2, ge=1, description="cells trained side by side (processes)")

    @field_validator("seeds", "learning_rates")
    @classmethod
    def _distinct(cls, value: list, info: Any) -> list:
        if len(set(value)) != len(value):
            raise ValueError(f"tuning.{info.field_name}={value} repeats an entry; accepted: distinct entries")
        if info.field_name == "seeds" and min(value) < 0:
            raise ValueError(f"tuning.seeds={value}; accepted: integers >= 0")
        if info.field_name == "learning_rates" and not all(0 < v < 1 for v in value):
            raise ValueError(f"tuning.learning_rates={value}; accepted: values in (0, 1)")
        return value


class Params(_Section):
    env: EnvParams = EnvParams()
    cbf: CBFParams = CBFParams()
    barriernet: BarrierNetParams = BarrierNetParams()
    train: TrainParams = TrainParams()
    eval: EvalParams = EvalParams()
    scenarios: ScenariosParams = ScenariosParams()
    qp_benchmark: QPBenchmarkParams = QPBenchmarkParams()
    decision: DecisionParams = DecisionParams()
    orchestration: OrchestrationParams = OrchestrationParams()
    gpu: GPUParams = GPUParams()
    numerics: NumericsParams = NumericsParams()
    tuning: TuningParams = TuningParams()

    def for_algo(self, algo: str) -> "Params":
        """These params with train.per_algo.<algo>'s settings in place of the shared ones (what one
        algorithm's training and its rebuilt policy read)."""
        overrides = getattr(self.train.per_algo, algo).overrides()
        if not overrides:
            return self
        raw = self.to_dict()
        for key, value in overrides.items():
            section, name = key.split(".")
            raw[section][name] = value
        return Params.model_validate(raw)

    @model_validator(mode="after")
    def _cross(self) -> "Params":
        if self.env.observed_obstacles > 8:
            raise ValueError("env.observed_obstacles must be <= 8")
        # Starts inside the CBF's safe set: the env keeps the pursuer's heading segment of length
        # env.start_margin clear, which covers a look-ahead point (and its robust inflation) up to it.
        robust = getattr(self.cbf, "robust_margin", 0.0)
        if self.cbf.lookahead + robust > self.env.start_margin:
            raise ValueError(
                f"cbf.lookahead={self.cbf.lookahead} + cbf.robust_margin={robust} exceeds env.start_margin="
                f"{self.env.start_margin}: episodes could start with the enforced look-ahead barrier < 0; accepted: "
                f"cbf.lookahead + cbf.robust_margin <= env.start_margin (raise env.start_margin or lower the other two)"
            )
        # The shaping is policy-invariant only at the learner's discount (Ng et al. 1999).
        if self.env.shaping_discount is None:  # a copy: the caller's EnvParams object stays as given
            object.__setattr__(self, "env", self.env.model_copy(update={"shaping_discount": self.train.gamma}))
        elif self.env.shaping_discount != self.train.gamma:
            raise ValueError(
                f"env.shaping_discount={self.env.shaping_discount} differs from train.gamma={self.train.gamma}: the "
                "shaping would change which policy is optimal; accepted: leave env.shaping_discount unset (null) or "
                f"equal to train.gamma"
            )
        # Training env seeds, the dev split and the test split must be three disjoint ranges of
        # env seeds: a test scenario seen in training or tuning is no longer held out.
        dev, test = self.eval.split_range("dev"), self.eval.split_range("test")
        if dev.start < test.stop and test.start < dev.stop:
            raise ValueError(
                f"the dev split [{dev.start}, {dev.stop}) (eval.dev_seed_base={self.eval.dev_seed_base}, "
                f"eval.dev_episodes={self.eval.dev_episodes}) overlaps the test split [{test.start}, {test.stop}) "
                f"(eval.test_seed_base={self.eval.test_seed_base}, eval.test_episodes={self.eval.test_episodes}); "
                "accepted: disjoint ranges"
            )
        top_train_env_seed = (max(self.train.seeds) + 1) * self.train.num_envs
        for split, rng in (("dev", dev), ("test", test)):
            clash = [s for s in self.train.seeds if s in rng]
            if clash:
                raise ValueError(
                    f"train.seeds {clash} fall in the {split} seed range [{rng.start}, {rng.stop}); "
                    f"accepted: seeds outside it (or move eval.{split}_seed_base)"
                )
            if top_train_env_seed > rng.start and rng.stop > 0:
                raise ValueError(
                    f"train.seeds up to {max(self.train.seeds)} with train.num_envs={self.train.num_envs} use env "
                    f"seeds 0..{top_train_env_seed - 1}, which reach eval.{split}_seed_base={rng.start}; accepted: "
                    f"smaller seeds or a larger eval.{split}_seed_base (training and {split} episodes must differ)"
                )
        return self

    @model_validator(mode="after")
    def _scenarios_cross(self) -> "Params":
        # Scenario episodes must be unseen in training and apart from the eval splits (a scenario
        # episode is not a test episode). scenarios.seeds outside train.seeds are not checked
        # here (an override of train.seeds alone stays valid): the flow skips them and the stage
        # refuses a missing checkpoint by name.
        base = self.scenarios.seed_base
        used = range(base, base + self.scenarios.episodes)
        top_train_env_seed = (max(self.train.seeds) + 1) * self.train.num_envs
        clashes = [f"eval.{split} split" for split in ("dev", "test")
                   if used.start < self.eval.split_range(split).stop and self.eval.split_range(split).start < used.stop]
        if used.start < top_train_env_seed:
            clashes.append(f"training env seeds 0..{top_train_env_seed - 1}")
        if clashes:
            raise ValueError(
                f"scenarios.seed_base={base} with scenarios.episodes={self.scenarios.episodes} uses env seeds "
                f"[{used.start}, {used.stop}), which overlap the {' and the '.join(clashes)}; accepted: a disjoint range"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# ---------------------------------------------------------------------------------------------
# Loading, overrides and error messages


def _valid_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        dotted = f"{prefix}{name}"
        keys.append(dotted)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_valid_keys(ann, dotted + "."))
    return keys


VALID_KEYS: list[str] = _valid_keys(Params)


def nearest_key(key: str) -> str | None:
    match = difflib.get_close_matches(key, VALID_KEYS, n=1, cutoff=0.4)
    if not match:  # compare the last component too: "train.seed" -> "train.seeds"
        leaf = key.rsplit(".", 1)[-1]
        leaves = {k.rsplit(".", 1)[-1]: k for k in VALID_KEYS}
        close = difflib.get_close_matches(leaf, list(leaves), n=1, cutoff=0.5)
        match = [leaves[close[0]]] if close else []
    return match[0] if match else None


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        hint = nearest_key(key)
        near = f"; did you mean '{hint}'?" if hint else ""
        return f"unknown key '{key}'{near}"
    value = error.get("input")
    msg = error["msg"]
    if kind == "value_error":  # our own validators already name key and accepted values
        return f"{key or 'params'}: {msg.removeprefix('Value error, ')}"
    return f"{key}={value!r} is invalid: {msg}"


def validate_params(raw: Mapping[str, Any], source: str = "params") -> Params:
    """Validate a nested mapping; raise ParamsError with one line per problem."""
    if not isinstance(raw, Mapping):
        raise ParamsError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(dict(raw))
    except ValidationError as exc:
        lines = [_describe(e) for e in exc.errors()]
        raise ParamsError(f"{source}: invalid params:\n  " + "\n  ".join(lines)) from None


def parse_override(text: str) -> tuple[str, Any]:
    """`'a.b=value'` -> ('a.b', yaml-typed value)."""
    if "=" not in text:
        raise ParamsError(f"override '{text}' is not key=value (example: --set train.total_steps=20000)")
    key, _, value = text.partition("=")
    key = key.strip()
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ParamsError(f"override '{text}': value is not valid YAML ({exc.problem})") from None
    return key, parsed


def apply_overrides(raw: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of `raw` with dotted-key overrides set; unknown keys raise ParamsError."""
    merged = copy.deepcopy(dict(raw))
    for key, value in overrides.items():
        if key in RENAMED_KEYS:
            raise ParamsError(f"override: key '{key}' was replaced by {RENAMED_KEYS[key]}")
        if key.startswith("env.") and key[4:] in REMOVED_ENV_KEYS:
            raise ParamsError(f"override: key '{key}' was removed: {REMOVED_ENV_KEYS[key[4:]]}")
        if key not in VALID_KEYS:
            hint = nearest_key(key)
            near = f"; did you mean '{hint}'?" if hint else ""
            raise ParamsError(f"override: unknown key '{key}'{near}")
        node = merged
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ParamsError(f"override '{key}': '{part}' is not a section")
        node[parts[-1]] = value
    return merged


def load_params(
    path: str | Path | None = None,
    overrides: Mapping[str, Any] | list[str] | None = None,
) -> Params:
    """Read params.yaml (default: the repo's), apply overrides, validate.

    `overrides` is either a mapping ``{"train.total_steps": 20000}`` (the Prefect flow's
    parameter) or a list of ``"key=value"`` strings (the command line's ``--set``).
    """
    path = Path(path) if path is not None else DEFAULT_PARAMS_PATH
    if not path.exists():
        raise ParamsError(f"params file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"params file {path} is not valid YAML: {exc}") from None
    if isinstance(overrides, (list, tuple)):
        overrides = dict(parse_override(o) for o in overrides)
    if overrides:
        raw = apply_overrides(raw, overrides)
    return validate_params(raw, source=str(path))


def params_hash(data: Mapping[str, Any]) -> str:
    """Stable short hash of a (nested) mapping of plain values."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Keys that do not change what training computes (where/how often it saves, logs, which
# device it updates on is kept: float results differ across devices).
# per_algo is applied (Params.for_algo) before the config is taken: another algorithm's setting
# never changes this cell's key.
_TRAIN_KEYS_NOT_SHAPING = {"algos", "seeds", "checkpoint_every", "log_every", "per_algo"}


def training_config(params: Params, algo: str, seed: int) -> dict[str, Any]:
    """The params that shape one training run (train.per_algo.<algo> applied); its hash keys the
    resume state."""
    params = params.for_algo(algo)
    train = {k: v for k, v in params.train.model_dump(mode="json").items() if k not in _TRAIN_KEYS_NOT_SHAPING}
    config = {
        "algo": algo,
        "seed": seed,
        "env": params.env.model_dump(mode="json"),
        "train": train,
        "numerics": params.numerics.model_dump(mode="json"),
    }
    if algo in ("barriernet", "cbf_beta", "shielded"):  # their policies contain CBF rows
        config["cbf"] = params.cbf.model_dump(mode="json")
    if algo == "barriernet":
        config["barriernet"] = params.barriernet.model_dump(mode="json")
    return config
