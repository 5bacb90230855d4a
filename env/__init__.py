"""The pursuit-evasion environment: one batched torch core, gymnasium views of it, evaders, rendering.

``import env`` registers ``PursuitEvasion-v0`` with an ``entry_point`` (the single env) and a
``vector_entry_point`` (the native vector env), so ``gymnasium.make("PursuitEvasion-v0")`` and
``gymnasium.make_vec("PursuitEvasion-v0", num_envs=64)`` work; keyword arguments override
fields of `env.config.EnvParams` (the env owns its config; `import env` loads nothing from the
pipeline's `tasks` or `flows`).
"""

from __future__ import annotations

import gymnasium

from env.config import EnvParams, EnvParamsError, make_params
from env.core import PlacementError, PursuitEvasionCore, SafetyState
from env.geometry import barrier_values, unicycle_arc, unicycle_step, wrap_angle
from env.pursuit_evasion import PursuitEvasionEnv, PursuitEvasionVectorEnv

ENV_ID = "PursuitEvasion-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(
        id=ENV_ID,
        entry_point="env.pursuit_evasion:PursuitEvasionEnv",
        vector_entry_point="env.pursuit_evasion:PursuitEvasionVectorEnv",
    )

__all__ = [
    "ENV_ID",
    "EnvParams",
    "EnvParamsError",
    "PlacementError",
    "PursuitEvasionCore",
    "PursuitEvasionEnv",
    "PursuitEvasionVectorEnv",
    "SafetyState",
    "barrier_values",
    "make_params",
    "unicycle_arc",
    "unicycle_step",
    "wrap_angle",
]
