"""What a person hits in the first hour, through the real CLI: bad config keys reported before torch is
imported, `config show` without keys a model does not have, did-you-mean in study files, run files that
follow the user's umask, and a progress bar while `check` works."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cli.test_terminal import BAR_LINE, in_terminal

from conftest import write_config


def bnbench(*args: object, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bnbench", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=300)  # fmt: skip


def test_a_bad_config_key_is_reported_without_importing_torch(tmp_path):
    # A `torch` that cannot be imported: if `run` imported it before validating, the message would be its error.
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('torch was imported')\n")
    (tmp_path / "bad.yaml").write_text("model: {name: mlp, hiden: [3]}\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "fake"), os.environ.get("PYTHONPATH", "")])}
    result = bnbench("run", "bad.yaml", "--seeds", "0,1", cwd=tmp_path, env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: bad.yaml: model.hiden: unknown key (did you mean 'hidden'?)"
    assert not (tmp_path / "runs").exists()


def test_config_show_prints_no_hidden_widths_for_models_without_them(tmp_path):
    lenet = bnbench("config", "show", "lenet_bn", cwd=tmp_path)
    assert lenet.returncode == 0 and "name: lenet" in lenet.stdout and "hidden" not in lenet.stdout
    mlp = bnbench("config", "show", "mlp_bn", cwd=tmp_path)
    assert "hidden:" in mlp.stdout


def test_a_study_key_typo_gets_a_did_you_mean(tmp_path):
    (tmp_path / "typo.yaml").write_text("name: x\nbase: mlp_bn\nmatrx:\n  norm.kind: [none]\n")
    result = bnbench("sweep", "typo.yaml", "--dry-run", cwd=tmp_path)
    assert result.returncode == 2
    assert "matrx: unknown key (did you mean 'matrix'?)" in result.stderr


def test_run_files_follow_the_users_umask(tmp_path):
    config = write_config(tmp_path / "c.yaml", train={"epochs": 1})
    result = subprocess.run(f"umask 022 && {sys.executable} -m bnbench run {config} --out-dir runs", shell=True,
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    files = [p for p in (tmp_path / "runs/c").iterdir() if p.is_file() and not p.name.startswith(".")]
    assert {"meta.json", "config.yaml", "metrics.csv", "checkpoint.pt", "model.pt"} <= {p.name for p in files}
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path.name


@pytest.mark.parametrize(
    ("columns", "command", "named"),
    [(100, "bnbench check", "scratch"),  # every shipped norm; at 60 columns a user's one norm (a third the work)
     (60, "bnbench check --norm bnbench.examples.my_norms:MyBatchNorm --reference torch", "MyBatchNorm")],
)  # fmt: skip
def test_check_shows_progress_while_it_works(tmp_path, columns, command, named):
    """`bnbench check` in a terminal (the one run of it there: test_terminal's read commands leave it here)."""
    session = in_terminal(command, tmp_path, columns, timeout=600)
    assert session.code == 0, session.text
    bars = [line for line in session.bar_lines if line.startswith("checking")]
    assert bars and all(BAR_LINE.match(line) and len(line) <= columns for line in bars)
    assert named in session.text  # then the table
    assert "Traceback" not in session.text and "error" not in session.text.lower()
    for line in session.screen:  # tables fit: a table row is whole on its line
        if line.startswith(("┃", "│")):
            assert line.endswith(("┃", "│")), f"a table row was wider than {columns} columns: {line!r}"
