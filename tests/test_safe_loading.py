"""Safe loading: every checkpoint and trained model is read with torch.load(weights_only=True), so a
planted file (a shared DVC remote, a copied results folder) is refused, naming the file, and its
pickle payload never runs; what training writes still loads, and resuming restores every RNG."""

from __future__ import annotations

import os
import pathlib
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tasks import io
from tasks.params import load_params
from tasks import train
from tasks.artifacts import CheckpointError, model_path as trained_model_path
from tasks.artifacts.policy import load_trained
from tasks.train import CHECKPOINT_NAME, Trainer, load_checkpoint, run, state_root
from tests.helpers import same_bits

REPO = Path(__file__).resolve().parent.parent
TINY = {
    "train.num_envs": 4,
    "train.rollout_steps": 8,
    "train.num_minibatches": 2,
    "train.update_epochs": 1,
    "train.total_steps": 4 * 8 * 2,  # 2 updates
    "train.checkpoint_every": 1,
    "train.seeds": [0],
    "env.max_steps": 20,
}


class Payload:
    """Unpickles as a call that creates `marker`: what a hostile file would do with os.system."""

    def __init__(self, marker: Path):
        self.marker = Path(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture
def state_dir(tmp_path, monkeypatch):
    path = tmp_path / "state"
    monkeypatch.setenv("BARRIERNET_STATE_DIR", str(path))
    return path


def _plant(path: Path, record: dict, marker: Path) -> None:
    """Write `record` with a payload inside to `path`, after proving the payload is live: an unsafe
    load of the same file runs it (so the refusals below are what stops it)."""
    io.torch_save({**record, "payload": Payload(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists(), "the payload did not run under an unsafe load: the test would prove nothing"
    marker.unlink()


def test_planted_model_is_refused_by_load_trained_and_the_evaluate_cli(tmp_path, state_dir):
    params = load_params(overrides=TINY)
    run(params, tmp_path, "baseline", 0)
    model_path = trained_model_path(tmp_path, "baseline", 0)
    actor, _, _, record = load_trained(model_path)  # what training wrote loads safely
    assert same_bits(actor.log_std.detach(), record["actor"]["log_std"])

    marker = tmp_path / "payload-ran"
    _plant(model_path, record, marker)
    with pytest.raises(CheckpointError, match="refused") as info:
        load_trained(model_path)
    assert str(model_path) in str(info.value)
    assert not marker.exists()

    # as a new user would: the evaluate stage from the command line
    sets = [arg for key, value in TINY.items() for arg in ("--set", f"{key}={value}")]
    done = subprocess.run(
        [sys.executable, "-m", "tasks", "evaluate", "--algo", "baseline", "--seed", "0", "--workdir", str(tmp_path),
         *sets], cwd=REPO, env={**os.environ, "BARRIERNET_STATE_DIR": str(state_dir)}, capture_output=True,
        text=True, timeout=300)
    assert done.returncode != 0
    assert str(model_path) in done.stderr, done.stderr[-2000:]
    assert not marker.exists()


def test_planted_checkpoint_is_refused_on_resume_and_left_in_place(tmp_path, state_dir):
    params = load_params(overrides=TINY)
    run(params, tmp_path, "baseline", 0)
    (ckpt,) = state_root().glob(f"*/{CHECKPOINT_NAME}")
    state = torch.load(ckpt, weights_only=True)  # what training wrote loads safely
    marker = tmp_path / "payload-ran"
    _plant(ckpt, state, marker)  # same key and config: only the payload stands in the way
    planted = ckpt.read_bytes()
    # the train stage's own resume checkpoint: its CheckpointError (the contract's, once train imports it)
    with pytest.raises(train.CheckpointError, match="refused") as info:
        run(params, tmp_path, "baseline", 0)
    assert str(ckpt) in str(info.value)
    assert not marker.exists()
    assert ckpt.read_bytes() == planted  # left in place for the user to inspect


def test_checkpoint_round_trip_restores_every_rng_exactly(tmp_path):
    """A state written by `Trainer.state_dict` loads with weights_only=True and restores the
    NumPy (incl. its cached Gaussian), Python and torch RNGs: the next draws equal those of the
    process that wrote it."""
    params = load_params(overrides=TINY)
    trainer = Trainer(params, "baseline", 0)
    trainer.train_one_update()
    np.random.standard_normal(1)  # an odd count: NumPy caches the second Gaussian (has_gauss = 1)
    random.random()
    path = io.torch_save(trainer.state_dict(), tmp_path / CHECKPOINT_NAME)
    expected = (np.random.standard_normal(3), np.random.random(2), random.random(), torch.rand(3))

    np.random.seed(99), random.seed(99), torch.manual_seed(99)  # scramble every RNG
    other = Trainer(params, "baseline", 0)
    other.load_state_dict(load_checkpoint(path, trainer.config))
    got = (np.random.standard_normal(3), np.random.random(2), random.random(), torch.rand(3))
    assert np.array_equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2] == expected[2] and same_bits(got[3], expected[3])
    for name, value in trainer.actor.state_dict().items():
        assert same_bits(other.actor.state_dict()[name], value), name


def test_model_file_bytes_do_not_depend_on_shared_strings(tmp_path):
    """model.pt stores params/config as canonical JSON text, so two records with equal content
    save to the same bytes however their string objects are shared (pickle memoizes by identity:
    before format 2 the CLI and the Prefect flow wrote different bytes for equal weights)."""
    import copy

    from tasks.artifacts.policy import trained_model_record
    from tasks.params import load_params

    params = load_params().to_dict()
    shared = "baseline"
    config = {"algo": shared, "train": {"update_device": "cpu"}, "names": [shared, shared]}
    copied = {"algo": "".join(["base", "line"]), "train": {"update_device": "".join(["c", "pu"])},
              "names": ["".join(["base", "line"]), "".join(["base", "line"])]}
    tensors = {"w": torch.arange(6.0).reshape(2, 3)}
    raw = []
    for cfg, prm in ((config, params), (copied, copy.deepcopy(params))):
        record = trained_model_record(algo=cfg["algo"], seed=0, key="k", config=cfg, params=prm, obs_dim=3,
                                      actor=tensors, critic=tensors, obs_rms=tensors)
        raw.append(io.torch_save(record, tmp_path / f"{len(raw)}.pt").read_bytes())
    assert raw[0] == raw[1]
    # and the pickled nested dicts (the old layout) are not identical: the test can fail
    old = []
    for i, cfg in enumerate((config, copied)):
        old.append(io.torch_save({"config": cfg}, tmp_path / f"old{i}.pt").read_bytes())
    assert old[0] != old[1]
