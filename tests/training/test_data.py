"""Data loading: a failed download leaves nothing behind (no network in the tests: urlopen refuses)."""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import write_config


@pytest.fixture
def no_network(monkeypatch):
    """torchvision's real download code runs (it makes its folders) and fails where it opens a URL."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise urllib.error.URLError("no network (test)")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.delenv("BNBENCH_DATA_DIR", raising=False)
    return calls


def test_a_failed_download_removes_every_folder_it_created(tmp_path, cli, no_network):
    """`--data-dir ../shared/data` on a machine without ../shared: the failed download must not leave an
    empty ../shared (or shared/data/FashionMNIST/raw) behind."""
    config = write_config(tmp_path / "c.yaml", data={"dataset": "fashion_mnist"})
    result = cli("run", config, "--data-dir", tmp_path / "shared" / "data", "--out-dir", tmp_path / "runs")
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1, result.output
    assert "the download failed" in result.stderr
    assert no_network  # the download was tried
    assert not (tmp_path / "shared").exists() and not (tmp_path / "runs").exists()


def test_a_failed_download_into_an_existing_folder_keeps_the_folder(tmp_path, cli, no_network):
    data = tmp_path / "data"
    (data / "FashionMNIST").mkdir(parents=True)
    (data / "MNIST" / "raw").mkdir(parents=True)
    (data / "MNIST" / "raw" / "mine.txt").write_text("kept")
    config = write_config(tmp_path / "c.yaml", data={"dataset": "fashion_mnist"})
    assert cli("run", config, "--data-dir", data, "--out-dir", tmp_path / "runs").exit_code == 2
    assert sorted(p.name for p in data.iterdir()) == ["FashionMNIST", "MNIST"]
    assert list((data / "FashionMNIST").iterdir()) == []  # raw/, made by the attempt, is gone
    config = write_config(tmp_path / "c.yaml", data={"dataset": "mnist"})
    assert cli("run", config, "--data-dir", data, "--out-dir", tmp_path / "runs").exit_code == 2
    assert [p.name for p in (data / "MNIST" / "raw").iterdir()] == ["mine.txt"]


def test_a_fresh_clones_default_is_dot_data_and_a_failed_download_leaves_none(tmp_path, cli, no_network, monkeypatch):
    """No --data-dir, no BNBENCH_DATA_DIR: the data go to ./data (git-ignored), nowhere outside the folder."""
    here = tmp_path / "clone"
    here.mkdir()
    monkeypatch.chdir(here)
    config = write_config(here / "c.yaml", data={"dataset": "mnist"})
    result = cli("run", config, "--out-dir", here / "runs")
    assert result.exit_code == 2 and f"in {Path('data') / 'MNIST' / 'raw'} and the download failed" in result.stderr
    assert no_network and sorted(p.name for p in here.iterdir()) == ["c.yaml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clone"]


ROOT = Path(__file__).resolve().parents[2]


def _make(target: str, tmp_path: Path, *variables: str) -> str:
    """`make TARGET` of the repository's Makefile with a stand-in bnbench that prints its data folder and
    arguments (and an installed stand-in venv, so nothing is installed)."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    fake = venv / "bin" / "bnbench"
    fake.write_text('#!/bin/sh\necho "DATA=${BNBENCH_DATA_DIR-unset} ARGS=$*"\n')
    fake.chmod(0o755)
    (venv / ".installed").touch()
    env = {k: v for k, v in os.environ.items() if k not in ("BNBENCH_DATA_DIR", "MAKEFLAGS", "MAKELEVEL")}
    done = subprocess.run(["make", "-s", "-C", str(ROOT), target, f"VENV={venv}", *variables],
                          capture_output=True, text=True, env=env, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_run_uses_the_clis_data_default_and_only_the_results_name_a_folder(tmp_path):
    """`make run` on a fresh clone must not point the CLI at ../shared/data (outside the clone);
    `make studies` passes its data folder explicitly."""
    assert _make("run", tmp_path).strip() == "DATA=unset ARGS=run configs/lenet_bn.yaml"
    studies = _make("studies", tmp_path, "STUDIES=mlp_lr", f"RESULTS_RUNS={tmp_path / 'r'}")
    assert (
        studies.startswith("DATA=unset ARGS=sweep configs/studies/mlp_lr.yaml")
        and "--data-dir ../shared/data" in studies
    )
    mine = _make("studies", tmp_path, "STUDIES=mlp_lr", "RESULTS_DATA_DIR=elsewhere")
    assert mine.rstrip().endswith("--data-dir elsewhere")


def test_a_download_stopped_by_a_signal_removes_every_folder_it_created(tmp_path):
    """SIGTERM while the download hangs (a proxy on this machine that accepts and never answers): the folders
    the download made are removed and the process ends as stopped, not with an empty ../shared left behind."""
    import signal
    import socket
    import sys
    import time

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    config = write_config(tmp_path / "c.yaml", data={"dataset": "fashion_mnist"})
    env = {k: v for k, v in os.environ.items() if k != "BNBENCH_DATA_DIR"}
    env.update(http_proxy=f"http://127.0.0.1:{port}", https_proxy=f"http://127.0.0.1:{port}")
    made = tmp_path / "shared"
    proc = subprocess.Popen([sys.executable, "-m", "bnbench", "run", str(config), "--data-dir", str(made / "data"),
                             "--out-dir", str(tmp_path / "runs")], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        server.settimeout(120)
        connection, _ = server.accept()  # the download is under way: its folders exist now
        deadline = time.monotonic() + 60
        while not made.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert made.exists()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        server.close()
    assert proc.returncode != 0 and "Traceback" not in err
    assert not made.exists() and not (tmp_path / "runs").exists()
    connection.close()
