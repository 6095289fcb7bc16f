"""Links and names cannot reach outside: nothing bnbench writes follows a link already there, names from a study
file stay inside the report folder, the report's record cannot make it delete a file it did not write, and
`export --to mlflow` uploads only the regular files bnbench wrote (a link or FIFO is never read). Real
subprocesses on a real (tiny) study."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import write_config


def _bnbench(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "bnbench", *[str(a) for a in args]]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("study")
    write_config(home / "base.yaml", train={"epochs": 1})
    spec = {"name": "st", "base": "base.yaml", "matrix": {"train.lr": [0.1]}, "seeds": "0"}
    (home / "st.yaml").write_text(yaml.safe_dump(spec))
    done = _bnbench("sweep", home / "st.yaml", "--out-dir", home / "runs", "--jobs", "1", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    return home / "runs" / "st"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text("the user's own file\n")
    return path


def test_a_figure_replaces_a_link_at_its_path_and_never_writes_through_it(study, tmp_path, victim):
    link = tmp_path / "curves.png"
    link.symlink_to(victim)
    result = _bnbench("plot", study, "--out", link)
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "the user's own file\n"
    assert not link.is_symlink() and link.read_bytes().startswith(b"\x89PNG")


def test_a_report_folder_that_is_a_link_is_refused(study, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "out").symlink_to(elsewhere)
    result = _bnbench("report", study, "--out", tmp_path / "out")
    assert result.returncode == 2 and "is a link" in result.stderr, result.stderr
    assert list(elsewhere.iterdir()) == []


def test_names_from_a_study_file_stay_inside_the_report_folder(study, tmp_path):
    received = tmp_path / "received"
    (received / "deep").mkdir(parents=True)
    subprocess.run(["cp", "-r", str(study), str(received / "deep" / "st")], check=True)
    saved = received / "deep" / "st" / "study.yaml"
    spec = yaml.safe_load(saved.read_text())
    spec["figures"] = [{"plot": "curves", "columns": ["../../../escaped", "test_acc"]}]
    saved.write_text(yaml.safe_dump(spec))
    out = received / "deep" / "st" / "report"
    result = _bnbench("report", received / "deep" / "st", "--out", out)
    assert result.returncode == 0, result.stderr
    outside = [p for p in tmp_path.rglob("*escaped*") if out not in p.parents]
    assert outside == []
    assert any("escaped" in p.name for p in out.iterdir())


def test_the_report_record_cannot_make_it_delete_a_file_it_did_not_write(study, tmp_path):
    out = tmp_path / "report"
    assert _bnbench("report", study, "--out", out).returncode == 0
    mine = out / "notes.png"  # the user's file, named like a figure
    mine.write_bytes(b"mine")
    other = tmp_path / "outside.png"
    other.write_bytes(b"outside")
    record = out / ".bnbench-report"
    fake = "0" * 64
    record.write_text(record.read_text() + f"{fake}  notes.png\nnotes.png\n{fake}  ../outside.png\n")
    result = _bnbench("report", study, "--out", out)
    assert result.returncode == 0, result.stderr
    assert mine.read_bytes() == b"mine" and other.read_bytes() == b"outside"
    lines = dict(line.split("  ", 1)[::-1] for line in record.read_text().splitlines())
    assert lines["README.md"] == hashlib.sha256((out / "README.md").read_bytes()).hexdigest()


def test_a_stale_figure_the_report_wrote_is_still_removed(study, tmp_path):
    out = tmp_path / "report"
    assert _bnbench("report", study, "--out", out).returncode == 0
    stale = out / "st_old_figure.png"
    stale.write_bytes(b"\x89PNG old")
    record = out / ".bnbench-report"
    digest = hashlib.sha256(stale.read_bytes()).hexdigest()
    record.write_text(record.read_text() + f"{digest}  st_old_figure.png\n")
    assert _bnbench("report", study, "--out", out).returncode == 0
    assert not stale.exists()


def test_tensorboard_export_never_follows_a_link_where_a_run_folder_goes(study, tmp_path):
    out = tmp_path / "tb"
    out.mkdir()
    (out / "lr=0.1-s0").symlink_to(tmp_path / "nowhere")  # dangling: would be created through the link
    result = _bnbench("export", study, "--to", "tensorboard", "--out", out)
    assert result.returncode == 2 and "exists already" in result.stderr, result.stderr
    assert not (tmp_path / "nowhere").exists()


def test_mlflow_uploads_only_the_files_bnbench_wrote(study, tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    received = tmp_path / "st"
    subprocess.run(["cp", "-r", str(study), str(received)], check=True)
    run = received / "lr=0.1-s0"
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY\n")
    (run / "id_rsa").symlink_to(secret)
    os.mkfifo(run / "pipe")  # reading it would hang
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = _bnbench("export", received, "--to", "mlflow", "--tracking-uri", uri, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "id_rsa" in warnings[0] and "pipe" in warnings[0], result.stderr
    client = MlflowClient(uri)
    (found,) = [r for r in client.search_runs([client.get_experiment_by_name("bnbench").experiment_id])
                if r.info.run_name == "lr=0.1-s0"]  # fmt: skip
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"metrics.csv", "config.yaml", "meta.json"} <= artifacts
    assert not artifacts & {"id_rsa", "pipe"}
