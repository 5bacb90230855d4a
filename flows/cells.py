"""Finished training cells, shared between flow runs and grid points: ``<workspace>/.cache/cells/``.

A cell is keyed by what it computes: the training resume key, i.e. the hash of the params that
shape its training (`tasks.params.training_config`: env, train without the keys that do not
change the result, cbf/barriernet where the policy holds CBF rows, numerics, the algorithm's
`per_algo` settings) and of the training code (`tasks.train.code_fingerprint`). Every flow run
publishes each cell it trained (`results/train/<algo>-s<seed>/`, all of it); a study restores a
published cell into a grid point's checkout instead of training it again, so a cell that finished
with the same params and code is never recomputed. The files are copies: a store entry never
changes once written (atomic rename), and deleting `.cache/cells` only costs recomputation.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tasks.params import Params, params_hash, training_config

CELLS_DIR = Path(".cache") / "cells"
SUMMARY = "summary.json"


def cell_key(params: Params, algo: str, seed: int) -> str:
    """The training resume key of cell (algo, seed) under `params` (tasks/train.py's Trainer.key)."""
    from tasks.train import code_fingerprint  # lazy: torch loads with it

    return params_hash({**training_config(params, algo, seed), "code": code_fingerprint()})


def cell_dir(workdir: Path, algo: str, seed: int) -> Path:
    """The train stage's output folder of one cell under `workdir`."""
    return Path(workdir) / "results" / "train" / f"{algo}-s{seed}"


def entry(workspace: Path, key: str, algo: str, seed: int) -> Path:
    return Path(workspace) / CELLS_DIR / f"{algo}-s{seed}-{key}"


def lookup(workspace: Path, key: str, algo: str, seed: int) -> Path | None:
    """The store entry of a finished cell, None when it was never published."""
    found = entry(workspace, key, algo, seed)
    return found if (found / SUMMARY).is_file() else None


def publish(workspace: Path, key: str, workdir: Path, algo: str, seed: int) -> Path:
    """Copy the finished cell from `workdir` into the store (once: an existing entry is kept)."""
    target = entry(workspace, key, algo, seed)
    if (target / SUMMARY).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        shutil.copytree(cell_dir(workdir, algo, seed), staging, dirs_exist_ok=True)
        try:
            os.rename(staging, target)
        except OSError:  # published meanwhile by another run: keep theirs
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def restore(found: Path, workdir: Path, algo: str, seed: int) -> dict[str, Any]:
    """Copy a store entry into `workdir`'s output folder of the cell; returns its summary with
    `"reused_from_store": True` (the file on disk is the original, byte for byte)."""
    out = cell_dir(workdir, algo, seed)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(found, out)
    return {**json.loads((out / SUMMARY).read_text()), "reused_from_store": True}
