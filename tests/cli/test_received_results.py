"""Reading results imports nothing: compare, ls, report, plot and export work from the recorded files of runs
that used a plugin norm, where that plugin is missing, and never import a module a saved config names, even
one sitting in the current folder. Real subprocesses, with the current folder as `python -m` sets it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import write_config

PLUGIN = """
from torch import nn


class Norm(nn.Module):
    def __init__(self, shape, cfg):
        super().__init__()
        self.bn = nn.BatchNorm1d(shape[0]) if len(shape) == 1 else nn.BatchNorm2d(shape[0])

    def forward(self, x):
        return self.bn(x)
"""
TRAP = """
from pathlib import Path

Path(__file__).with_name("MARKER").touch()
raise SystemExit(7)
"""


def _bnbench(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "BNBENCH_DEBUG"}
    cmd = [sys.executable, "-m", "bnbench", *[str(a) for a in args]]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="module")
def plugin_study(tmp_path_factory) -> Path:
    """A study trained with `received_norm:Norm` from its own folder; returns the study's run folder."""
    home = tmp_path_factory.mktemp("sender")
    (home / "received_norm.py").write_text(PLUGIN)
    write_config(home / "base.yaml", norm={"kind": "received_norm:Norm"}, train={"epochs": 1})
    study = {"name": "st", "base": "base.yaml", "matrix": {"train.lr": [0.1, 0.2]}, "seeds": "0"}
    (home / "st.yaml").write_text(yaml.safe_dump(study))
    done = _bnbench("sweep", "st.yaml", "--out-dir", home / "runs", "--jobs", "1", "--device", "cpu", cwd=home)
    assert done.returncode == 0, done.stderr
    return home / "runs" / "st"


READS = [
    ["compare", "{study}"],
    ["compare", "{study}", "--format", "json"],
    ["ls", "{study}"],
    ["report", "{study}", "--out", "{here}/report"],
    ["plot", "{study}", "--out", "{here}/curves.png"],
    ["export", "{study}", "--to", "tensorboard", "--out", "{here}/tb"],
]


@pytest.mark.parametrize("where", ["trap", "missing"])
@pytest.mark.parametrize("args", READS, ids=lambda a: " ".join(a[:1] + a[2:3]))
def test_reading_results_imports_nothing(plugin_study, tmp_path, where, args):
    here = tmp_path / where
    here.mkdir()
    if where == "trap":  # the module the runs' config.yaml names, but one that runs code on import
        (here / "received_norm.py").write_text(TRAP)
    result = _bnbench(*[a.format(study=plugin_study, here=here) for a in args], cwd=here)
    assert result.returncode == 0, result.stderr
    assert not (here / "MARKER").exists()
    assert "Traceback" not in result.stderr


def test_a_plugin_that_exits_at_import_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "received_norm.py").write_text(TRAP)
    write_config(tmp_path / "c.yaml", norm={"kind": "received_norm:Norm"})
    result = _bnbench("run", "c.yaml", "--dry-run", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: c.yaml: norm.kind: received_norm:Norm: importing received_norm failed (SystemExit: 7)"
    )


def test_run_still_finds_a_plugin_in_the_current_folder(tmp_path):
    (tmp_path / "received_norm.py").write_text(PLUGIN)
    write_config(tmp_path / "c.yaml", norm={"kind": "received_norm:Norm"})
    result = _bnbench("run", "c.yaml", "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
