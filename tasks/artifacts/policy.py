"""Loading a trained policy from the train stage's ``model.pt``, the policy each arm plays, and
one batched call of it whose rows do not depend on the batch (``act_padded``: evaluate and
scenarios both play through it).

Evaluate, scenarios and the tuning study load checkpoints the same way: ``torch.load`` with
``weights_only=True`` (tensors and plain containers only), so a planted file from a shared DVC
remote or a copied folder cannot run code. Kept apart from ``tasks.artifacts`` because it needs
torch and the actors: a stage that only reads tables does not get the model in its code deps.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import torch

from torch import Tensor

from env.core import SafetyState
from model.actors import ALGOS, ActorOutput, Critic, make_actor, make_filter
from model.ppo import RunningMeanStd
from tasks.artifacts import ALGO_OF_ARM, ARMS, CheckpointError
from tasks.params import Params

# The model layer owns the algorithm list (model/ must not import tasks/): every arm must need
# an algorithm it can build, and every algorithm must be played by some arm.
if set(ALGO_OF_ARM.values()) != set(ALGOS):
    raise ImportError(f"tasks.artifacts.ALGO_OF_ARM names algorithms {sorted(set(ALGO_OF_ARM.values()))}; "
                      f"model.actors.ALGOS has {sorted(ALGOS)}: they must agree")


def _safe_torch_load(path: Path, what: str, map_location: Any) -> Any:
    """torch.load with weights_only=True: tensors and plain containers (dict, list, tuple, str,
    int, float, bool, None) only, so a planted file (from a shared DVC remote, a copied folder)
    cannot run code. Raises CheckpointError naming the file: refused (other Python objects in the
    pickle) or unreadable (truncated, not a torch file)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{what} {path} was refused: it holds Python objects other than tensors and plain containers, "
            f"which loading would run as code (torch.load weights_only=True: {reason}). It was left in place; "
            "do not load it with weights_only=False unless you wrote it yourself. Delete it and rerun the train stage."
        ) from None
    except Exception as exc:  # truncated, tampered, not a torch file
        raise CheckpointError(
            f"{what} {path} is unreadable ({type(exc).__name__}: {exc}); it was left in place. "
            "Delete it (or its folder) to start this configuration from scratch."
        ) from None


# model.pt's layout. Format 2 stores the params and the training config as canonical JSON text:
# pickling the nested dicts made the file's bytes depend on which string objects happened to be
# shared (pickle memoizes by identity), so the same weights written through `dvc repro` and
# through the Prefect flow had different md5s in DVC.
MODEL_FORMAT = 2


def canonical_json(value: Any) -> str:
    """One text per value: sorted keys, no whitespace (floats keep Python's round-trip repr)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


def trained_model_record(*, algo: str, seed: int, key: str, config: dict[str, Any], params: dict[str, Any],
                         obs_dim: int, actor: dict[str, torch.Tensor], critic: dict[str, torch.Tensor],
                         obs_rms: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What the train stage saves as model.pt (tensors moved to the CPU; metadata as JSON text)."""
    return {
        "format": MODEL_FORMAT,
        "algo": str(algo),
        "seed": int(seed),
        "key": str(key),
        "config": canonical_json(config),
        "params": canonical_json(params),
        "obs_dim": int(obs_dim),
        "actor": {k: v.cpu() for k, v in actor.items()},
        "critic": {k: v.cpu() for k, v in critic.items()},
        "obs_rms": {k: v.cpu() for k, v in obs_rms.items()},
    }


def _decoded(record: Any, path: Path) -> dict[str, Any]:
    """model.pt as saved -> the record with ``config`` and ``params`` as dicts."""
    if not isinstance(record, dict) or record.get("format") != MODEL_FORMAT:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        raise CheckpointError(f"trained model {path} has format {found!r}; this code reads format {MODEL_FORMAT}. "
                              "Rerun the train stage to rewrite it.")
    return {**record, "config": json.loads(record["config"]), "params": json.loads(record["params"])}


def load_trained(path: str | Path, params: Params | None = None, device: str | torch.device = "cpu"):
    """Load model.pt -> (actor, critic, obs_rms, record). Raises CheckpointError naming the file."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"trained model {path} does not exist; run the train stage first")
    try:
        record = _decoded(_safe_torch_load(path, "trained model", device), path)
        if params is None:
            params = Params.model_validate(record["params"])
        actor = make_actor(record["algo"], record["obs_dim"], params.for_algo(record["algo"])).to(device)
        actor.load_state_dict(record["actor"])
        critic = Critic(record["obs_dim"], params.train.hidden_sizes).to(device)
        critic.load_state_dict(record["critic"])
        obs_rms = RunningMeanStd((record["obs_dim"],)).to(device)
        obs_rms.load_state_dict(record["obs_rms"])
    except CheckpointError:
        raise
    except Exception as exc:
        raise CheckpointError(f"trained model {path} is unreadable or incompatible ({type(exc).__name__}: {exc})") from None
    actor.eval()
    return actor, critic, obs_rms, record


def build_policy(arm: str, actor: torch.nn.Module, params: Params, tuned: dict[str, Any] | None = None) -> torch.nn.Module:
    """The policy an arm plays. The training mechanisms (barriernet, baseline, cbf_beta: the
    deterministic action inside the safe box, shielded: the filter it trained with) are the actor
    itself; ``*_rcbf`` arms put the RCBF-QP filter (form ``cbf.form``, gamma ``cbf.filter_gamma``,
    clearances + ``cbf.robust_margin``) on the actor's action -- for cbf_beta on its unconstrained
    action (the Beta's mean over the whole action box), the deployment mechanism.
    ``baseline_tuned_filter``: the filter the evaluate stage's sweep (or the tuning study) chose on
    dev (`tuned`: its form, gamma, robust_margin)."""
    if arm in ("barriernet", "baseline", "cbf_beta", "shielded"):
        return actor
    if arm == "baseline_tuned_filter":
        if tuned is None:
            raise ValueError("arm 'baseline_tuned_filter' needs the configuration the filter sweep chose on dev "
                             "(eval.filter_sweep.enabled with baseline in eval.filter_sweep.algos)")
        return make_filter(actor, params, tuned["form"], tuned["gamma"], robust_margin=tuned["robust_margin"])
    if arm in ("barriernet_rcbf", "cbf_beta_rcbf"):
        return make_filter(actor, params, params.cbf.form, robust_margin=params.cbf.robust_margin)
    if arm == "baseline_ct_filter":
        return make_filter(actor, params, "ct")
    if arm == "baseline_dcbf_filter":
        return make_filter(actor, params, "dcbf")
    raise ValueError(f"unknown arm '{arm}'; accepted: {ARMS}")


# A policy call's batch is padded to a multiple of this many rows (at least this many): MKL's sgemm
# in the pinned (COMPATIBLE) branch computes a batch of M rows, M >= 8 and a multiple of 4, row for
# row alike whatever M and the row's position (measured for M <= 1024), but the last M mod 4 rows
# and batches under 8 with other kernels and other round-off; and the QP takes another route for
# a single row. Padded, a row's action does not depend on the batch it was played in.
CALL_ROWS = 8


def padded_call_rows(obs: Tensor, safety: SafetyState) -> tuple[Tensor, SafetyState]:
    """obs (B, obs_dim) and the safety state's (B, ...) tensors, padded with copies of the last row
    to a multiple of CALL_ROWS (see there): (B', obs_dim) and (B', ...), B' >= B."""
    pad = -obs.shape[0] % CALL_ROWS
    if not pad:
        return obs, safety

    def padded(x: Tensor) -> Tensor:
        return torch.cat((x, x[-1:].expand(pad, *x.shape[1:])))

    return padded(obs), type(safety)(*(padded(x) for x in safety))


def first_rows(out: ActorOutput, batch: int) -> ActorOutput:
    """The first `batch` rows of a padded call's output (every info value is per row)."""
    if out.action.shape[0] == batch:
        return out
    return ActorOutput(out.action[:batch], out.sample[:batch], out.log_prob[:batch],
                       {key: value[:batch] for key, value in out.info.items()})


def act_padded(policy: torch.nn.Module, obs: Tensor, safety: SafetyState) -> ActorOutput:
    """One policy's deterministic actions for obs (B, obs_dim), the call padded to CALL_ROWS, so a
    row's action does not depend on the batch it is played in: ActorOutput of B rows."""
    rows, rows_safety = padded_call_rows(obs, safety)
    return first_rows(policy(rows, rows_safety, deterministic=True), obs.shape[0])
