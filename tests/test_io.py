"""tasks/io.py: every output is written to a temp file beside it and renamed, so a write that
fails half way leaves the earlier output as it was and no temp file behind."""

from __future__ import annotations

import json
import pickle
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from tasks import io


class HalfWrittenFrame:
    """A DataFrame stand-in whose `to_csv` writes part of its output, then fails (a full disk, a
    killed worker)."""

    def to_csv(self, path, index=False):
        Path(path).write_text("arm,seed\nbarriernet,")
        raise OSError("No space left on device")


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_a_failed_csv_write_keeps_the_earlier_file(tmp_path):
    path = io.write_csv(tmp_path / "episodes.csv", pd.DataFrame({"arm": ["baseline"], "seed": [0]}))
    before = path.read_bytes()
    with pytest.raises(OSError, match="No space left"):
        io.write_csv(path, HalfWrittenFrame())
    assert path.read_bytes() == before and _leftovers(tmp_path) == []


def test_a_failed_checkpoint_write_keeps_the_earlier_checkpoint(tmp_path):
    path = io.torch_save({"update": 3, "actor": {"w": torch.arange(4.0)}}, tmp_path / "checkpoint.pt")
    before = path.read_bytes()
    # pickling a local function fails after torch.save has written the file's first records
    with pytest.raises((pickle.PicklingError, AttributeError), match="pickle"):
        io.torch_save({"update": 4, "hook": lambda: None}, path)
    assert path.read_bytes() == before and _leftovers(tmp_path) == []
    assert torch.load(path, weights_only=True)["update"] == 3


def test_json_takes_numpy_and_paths_and_names_what_it_cannot(tmp_path):
    path = io.write_json(tmp_path / "metrics.json", {"rate": np.float32(0.5), "counts": np.arange(3),
                                                     "where": Path("results/compare")})
    assert json.loads(path.read_text()) == {"counts": [0, 1, 2], "rate": 0.5, "where": "results/compare"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable by others, not mkstemp's 0600
    with pytest.raises(TypeError, match="not JSON serialisable: set"):  # raised before any file is opened
        io.write_json(path, {"arms": {"baseline"}})
