"""Sharing through the DVC remote (issue 19 item 2).

The remote is set in one place, .dvc/config (`shared`, url ../../barriernet-dvc-remote: the
folder next to the checkout). The flow pushes after a run when `orchestration.dvc_push` is true,
and a fresh `git clone` of the pushed result gets every cached output back with `dvc pull`,
after which `dvc status` is clean. The stages are the flow tests' fakes (same signatures and
output paths as the real ones): what is checked here is the recording, pushing and pulling.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import flows.pipeline as pipeline
import tests.test_flow as fakes
from tests.helpers import REPO_ROOT, run_dvc
from tasks.params import ParamsError
from tasks.registry import STAGES

GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "-c", "commit.gpgsign=false"]


def test_the_remote_is_set_once_in_dvc_config_outside_the_checkout():
    # --project: .dvc/config itself (not a user's or the machine's config).
    listed = run_dvc(REPO_ROOT, "config", "--project", "--list")
    assert listed.returncode == 0, listed.stderr
    config = dict(line.split("=", 1) for line in listed.stdout.split())
    assert config["core.remote"] == "shared"
    # DVC reads a relative url from .dvc/: two levels up is the folder that holds the checkout.
    resolved = ((REPO_ROOT / ".dvc") / config["remote.shared.url"]).resolve()
    assert resolved == REPO_ROOT.parent / "barriernet-dvc-remote" and not resolved.is_relative_to(REPO_ROOT)
    remotes = run_dvc(REPO_ROOT, "remote", "list")
    assert remotes.returncode == 0 and str(resolved) in remotes.stdout, remotes.stdout


def test_dvc_push_must_be_a_boolean():
    from tasks.params import load_params

    assert load_params(REPO_ROOT / "params.yaml").orchestration.dvc_push is False
    for bad in (1, "yes"):
        with pytest.raises(ParamsError, match=r"orchestration\.dvc_push=.*valid boolean"):
            load_params(REPO_ROOT / "params.yaml", {"orchestration.dvc_push": bad})


@pytest.fixture
def fake_workspace(monkeypatch, tmp_path):
    return fakes.faked_workspace(monkeypatch, tmp_path, {"train.seeds": [0], "orchestration.retry_delay_seconds": 0,
                                                         "orchestration.dvc_push": True})


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_push_without_a_remote_is_refused_before_any_work(prefect_server, fake_workspace):
    run_dvc(fake_workspace, "remote", "remove", "shared")
    with pytest.raises(pipeline.PipelineError, match=r"orchestration\.dvc_push=true .* no default DVC remote"):
        pipeline.train_and_eval(workspace=str(fake_workspace))
    assert fakes.CALLS == []


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_fresh_clone_of_a_pushed_run_pulls_everything_and_is_clean(prefect_server, fake_workspace, tmp_path):
    remote = tmp_path / "barriernet-dvc-remote"  # what ws/.dvc/../../barriernet-dvc-remote names
    result = pipeline.train_and_eval(workspace=str(fake_workspace))
    assert result["dvc_status"] == {} and result["dvc_push"]["remote"] == "shared"
    assert remote.is_dir() and any(p.is_file() for p in remote.rglob("*"))

    # The author commits what the run recorded (dvc.lock, the git-tracked outputs, .gitignores).
    subprocess.run([*GIT, "add", "-A"], cwd=fake_workspace, check=True)
    subprocess.run([*GIT, "commit", "-q", "-m", "result"], cwd=fake_workspace, check=True)
    cached = [p for stage in STAGES.values() for cell in stage.cells(pipeline.load_params(fake_workspace / "params.yaml"))
              for p in stage.paths("outs", cell) if p not in [u.format(**cell) for u in stage.uncached]]
    assert "results/train/barriernet-s0/model.pt" in cached

    clone = tmp_path / "clone"  # a sibling of ws: the same relative remote url finds the same folder
    subprocess.run(["git", "clone", "-q", str(fake_workspace), str(clone)], check=True)
    assert not (clone / "results/train/barriernet-s0/model.pt").exists()  # not in git
    pulled = run_dvc(clone, "pull")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    for rel in cached:
        a, b = fake_workspace / rel, clone / rel
        if a.is_dir():
            assert sorted(p.relative_to(a) for p in a.rglob("*")) == sorted(p.relative_to(b) for p in b.rglob("*"))
        else:
            assert b.read_bytes() == a.read_bytes(), rel
    status = run_dvc(clone, "status")
    assert status.returncode == 0 and "Data and pipelines are up to date" in status.stdout, status.stdout
