"""A run folder someone sent is data, never code: checkpoints load weights-only, a crafted one is a damaged
file (one line, exit 2, its payload never runs), and a checkpoint ahead of metrics.csv is refused. Each case
drives the real CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import write_config


class Payload:
    """Unpickling this runs `touch MARKER`: what a crafted checkpoint would do under an unsafe load."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _bnbench(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "bnbench", *[str(a) for a in args]]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=300)


def _interrupted(run: Path) -> None:
    """Make a finished run look interrupted (as after Ctrl-C), so it is resumable."""
    meta = json.loads((run / "meta.json").read_text())
    meta.update(status="interrupted", error="interrupted during epoch 2")
    (run / "meta.json").write_text(json.dumps(meta))
    (run / "model.pt").unlink()


@pytest.fixture
def stopped_run(tmp_path: Path) -> Path:
    config = write_config(tmp_path / "c.yaml", train={"epochs": 2})
    done = _bnbench("run", config, "--out-dir", tmp_path / "runs", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    run = tmp_path / "runs" / "c"
    _interrupted(run)
    return run


def test_a_checkpoint_holds_only_tensors_and_plain_types(stopped_run):
    state = torch.load(stopped_run / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and isinstance(state["rng"]["numpy"]["keys"], torch.Tensor)


def test_the_random_state_round_trips_through_a_safe_load(tmp_path):
    import random

    from bnbench.training.train import rng_state, set_rng_state

    random.seed(3), np.random.seed(4), torch.manual_seed(5)
    torch.save(rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


@pytest.mark.parametrize("how", [["run", "--resume"], ["run", "--dry-run", "--resume"]])
def test_a_crafted_checkpoint_never_runs_on_resume(stopped_run, tmp_path, how):
    marker = tmp_path / "MARKER"
    state = torch.load(stopped_run / "checkpoint.pt", weights_only=True)
    torch.save({**state, "extra": Payload(marker)}, stopped_run / "checkpoint.pt")
    result = _bnbench(*how, stopped_run)
    assert result.returncode == 2, result.stderr
    assert "damaged checkpoint (it holds code, not only tensors: posix.system)" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not marker.exists()
    assert json.loads((stopped_run / "meta.json").read_text())["status"] == "interrupted"


def test_a_crafted_checkpoint_never_runs_when_a_sweep_resumes(tmp_path):
    write_config(tmp_path / "base.yaml", train={"epochs": 2})
    study = {"name": "st", "base": "base.yaml", "matrix": {"norm.kind": ["none"]}, "seeds": "0"}
    (tmp_path / "st.yaml").write_text(yaml.safe_dump(study))
    out = tmp_path / "runs"
    first = _bnbench("sweep", tmp_path / "st.yaml", "--out-dir", out, "--jobs", "1", "--device", "cpu")
    assert first.returncode == 0, first.stderr
    (run,) = [p for p in (out / "st").iterdir() if p.is_dir()]
    _interrupted(run)
    marker = tmp_path / "MARKER"
    torch.save(Payload(marker), run / "checkpoint.pt")
    for dry in ([], ["--dry-run"]):
        result = _bnbench("sweep", out / "st", "--jobs", "1", "--device", "cpu", *dry)
        assert result.returncode == 2, result.stderr
        assert "damaged checkpoint" in result.stderr and f"move {run} away" in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert not marker.exists()


def test_an_old_format_checkpoint_is_refused_with_the_reason_and_how_to_restart(stopped_run):
    state = torch.load(stopped_run / "checkpoint.pt", weights_only=True)
    state["rng"]["numpy"] = np.random.get_state()  # what bnbench wrote before weights-only loading
    torch.save(state, stopped_run / "checkpoint.pt")
    result = _bnbench("run", "--resume", stopped_run)
    assert result.returncode == 2, result.stderr
    assert "written by an older bnbench" in result.stderr and "start a new run" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_checkpoint_ahead_of_metrics_is_refused_as_damaged(stopped_run):
    metrics = stopped_run / "metrics.csv"
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:2]))  # header and epoch 1
    before = {p.name: p.read_bytes() for p in stopped_run.iterdir() if p.is_file()}
    result = _bnbench("run", "--resume", stopped_run)
    assert result.returncode == 2, result.stderr
    assert "the checkpoint is at epoch 2 but metrics.csv records 1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in stopped_run.iterdir() if p.is_file()} == before


def test_a_checkpoint_that_is_a_link_is_never_read(stopped_run, tmp_path):
    secret = tmp_path / "elsewhere.pt"
    (stopped_run / "checkpoint.pt").rename(secret)
    (stopped_run / "checkpoint.pt").symlink_to(secret)
    result = _bnbench("run", "--resume", stopped_run)
    assert result.returncode == 2 and "not a regular file" in result.stderr, result.stderr
