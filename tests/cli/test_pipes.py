"""Pipes and terminals never break a run: a reader that went away (`| head`), a closed stdout or stderr, an
ASCII-only locale in a pseudo-terminal. Real processes; the pipe's reader is closed before the command
starts, so its first write meets a closed pipe whatever the timing."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_config

BNBENCH = [sys.executable, "-m", "bnbench"]


def _into_closed_pipe(*args: object) -> subprocess.CompletedProcess:
    """`bnbench ARGS | head -0`: stdout is a pipe nobody reads."""
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run([*BNBENCH, *map(str, args)], stdout=write, stderr=subprocess.PIPE, text=True, timeout=300)
    finally:
        os.close(write)
    return proc


def _statuses(folder: Path) -> list[str]:
    return [json.loads(p.read_text())["status"] for p in sorted(folder.rglob("meta.json"))]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path / "c.yaml", train={"epochs": 2})


def test_run_into_a_closed_pipe_trains_to_the_end_and_exits_141(config, tmp_path):
    result = _into_closed_pipe("run", config, "--out-dir", tmp_path / "runs", "--device", "cpu")
    assert result.returncode == 141, result.stderr
    assert "Traceback" not in result.stderr and "error" not in result.stderr
    assert _statuses(tmp_path / "runs") == ["completed"]


def test_sweep_and_compare_into_a_closed_pipe(config, tmp_path):
    out = tmp_path / "runs"
    args = ["sweep", config, "--grid", "train.lr=0.1,0.2", "--out-dir", out, "--jobs", "2", "--device", "cpu"]
    result = _into_closed_pipe(*args)
    assert result.returncode == 141, result.stderr
    assert "Traceback" not in result.stderr
    assert _statuses(out) == ["completed", "completed"]
    compared = _into_closed_pipe("compare", out / "c")
    assert compared.returncode == 141 and compared.stderr == ""


@pytest.mark.parametrize("closed", [">&-", "2>&-", ">&- 2>&-"])
def test_a_closed_stdout_or_stderr_never_fails_the_run(config, tmp_path, closed):
    command = " ".join([*BNBENCH, "run", str(config), "--out-dir", str(tmp_path / "runs"), "--device", "cpu"])
    result = subprocess.run(["bash", "-c", f"{command} {closed}"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert _statuses(tmp_path / "runs") == ["completed"]
    assert not (tmp_path / "runs" / "c" / "metrics.csv").read_text().count("epoch 1/2")  # no line landed in a CSV


def _in_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, bytes]:
    main, child = pty.openpty()
    proc = subprocess.Popen([*BNBENCH, *args], stdin=child, stdout=child, stderr=child, env={**os.environ, **env})
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the terminal's other side closed: the process is done
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    return proc.wait(timeout=300), out


@pytest.mark.parametrize(
    "env",
    [
        {"LC_ALL": "C", "TERM": "xterm"},
        {"LC_ALL": "", "LANG": "C.UTF-8", "TERM": "dumb"},
        {"LC_ALL": "", "LANG": "C.UTF-8", "TERM": "xterm", "PYTHONIOENCODING": "ascii"},
    ],  # fmt: skip
    ids=["LC_ALL=C", "TERM=dumb", "ascii-encoding"],
)
def test_an_ascii_terminal_gets_ascii_and_the_run_completes(config, tmp_path, env):
    code, out = _in_a_terminal(["run", str(config), "--out-dir", str(tmp_path / "runs"), "--device", "cpu"], env)
    assert code == 0, out.decode(errors="replace")
    assert all(byte < 128 for byte in out), sorted({chr(b) for b in out if b > 127})
    assert _statuses(tmp_path / "runs") == ["completed"]
