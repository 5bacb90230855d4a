"""The pursuit-evasion environment: one batched torch core, gymnasium views of it, evaders, rendering.

``import env`` registers ``PursuitEvasion-v0`` with an ``entry_point`` (the single env) and a
``vector_entry_point`` (the native vector env), so ``gymnasium.make("PursuitEvasion-v0")`` and
``gymnasium.make_vec("PursuitEvasion-v0", num_envs=64)`` work; keyword arguments override
fields of `env.config.EnvParams` (the env owns its config; `import env` loads nothing from the
pipeline's `tasks` or `flows`).
"""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium

ENV_ID = "PursuitEvasion-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(
        id=ENV_ID,
        entry_point="env.pursuit_evasion:PursuitEvasionEnv",
        vector_entry_point="env.pursuit_evasion:PursuitEvasionVectorEnv",
    )

# The public names load on first use (PEP 562), so `import env.config` or `import env.core` runs
# only what they need: a stage that never renders does not depend on env/render.py or the gymnasium
# views (tasks/code_deps.py derives each stage's code deps from what its imports can execute).
_LAZY = {
    "EnvParams": "env.config", "EnvParamsError": "env.config", "make_params": "env.config",
    "PlacementError": "env.core", "PursuitEvasionCore": "env.core", "SafetyState": "env.core",
    "barrier_values": "env.geometry", "unicycle_arc": "env.geometry", "unicycle_step": "env.geometry",
    "wrap_angle": "env.geometry",
    "PursuitEvasionEnv": "env.pursuit_evasion", "PursuitEvasionVectorEnv": "env.pursuit_evasion",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'env' has no attribute {name!r}")


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
