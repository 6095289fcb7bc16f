"""Faults during a run and bad input, through the real CLI: exit codes, messages, files on disk."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from bnbench.training.train import Trainer

from conftest import read_run, write_config, write_mnist

TIMING = ["epoch_seconds", "examples_per_second"]


def _start(config: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "bnbench", "run", str(config), "--out-dir", str(out), "--device", "cpu", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_epochs(run: Path, n: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = run / "metrics.csv"
        if metrics.is_file() and len(metrics.read_text().splitlines()) > n:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError("the run did not reach the epoch in time")


def _slow_config(tmp_path: Path, epochs: int = 40) -> Path:
    return write_config(tmp_path / "long.yaml", data={"train_subset": 1024}, train={"epochs": epochs})


def _stopped_run(tmp_path: Path, sig: int = signal.SIGINT, epochs_first: int = 1, epochs: int = 40) -> Path:
    """A real subprocess run, stopped by `sig` once `epochs_first` epochs are written; returns its directory."""
    config, out = _slow_config(tmp_path, epochs=epochs), tmp_path / "runs"
    proc = _start(config, out)
    _wait_for_epochs(out / "long", epochs_first, proc)
    proc.send_signal(sig)
    proc.communicate(timeout=60)
    assert proc.returncode == 130
    return out / "long"


def test_sigint_keeps_completed_epochs_and_resume_matches_an_uninterrupted_run(tmp_path, cli):
    config, out = _slow_config(tmp_path), tmp_path / "runs"
    proc = _start(config, out)
    _wait_for_epochs(out / "long", 2, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    meta, metrics, steps = read_run(out / "long")
    assert meta["status"] == "interrupted" and meta["epochs_completed"] == len(metrics) >= 2
    assert list(metrics["epoch"]) == list(range(1, len(metrics) + 1))
    assert torch.load(out / "long/checkpoint.pt", weights_only=False)["epoch"] == len(metrics)

    result = cli("run", "--resume", out / "long")
    assert result.exit_code == 0, result.output
    assert cli("run", config, "--out-dir", out).exit_code == 0  # the same run, never interrupted
    resumed, straight = read_run(out / "long"), read_run(out / "long-2")
    assert resumed[0]["status"] == "completed" and len(resumed[0]["resumed_at"]) == 1
    pd.testing.assert_frame_equal(resumed[1].drop(columns=TIMING), straight[1].drop(columns=TIMING))
    pd.testing.assert_frame_equal(resumed[2], straight[2])


def test_sigterm_and_a_second_sigint(tmp_path):
    config, out = _slow_config(tmp_path), tmp_path / "runs"
    proc = _start(config, out)
    _wait_for_epochs(out / "long", 1, proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 130 and read_run(out / "long")[0]["status"] == "interrupted"

    done = read_run(out / "long")[0]["epochs_completed"]
    proc = _start(config, out)  # the same command again continues the interrupted run
    _wait_for_epochs(out / "long", done + 1, proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130 and not (out / "long-2").exists()
    meta, metrics, _ = read_run(out / "long")
    assert meta["status"] == "interrupted" and meta["epochs_completed"] == len(metrics) > done


def test_sigkill_leaves_readable_files_shown_as_stale_and_resumable(tmp_path, cli):
    config, out = _slow_config(tmp_path), tmp_path / "runs"
    proc = _start(config, out)
    _wait_for_epochs(out / "long", 2, proc)
    proc.kill()
    proc.communicate(timeout=60)
    meta, metrics, steps = read_run(out / "long")  # every file parses
    assert meta["status"] == "running" and len(metrics) >= 2
    result = cli("compare", out, "--format", "json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["runs"][0]["status"] == "stale"
    result = cli("run", "--resume", out / "long")
    assert result.exit_code == 0, result.output
    meta, metrics, _ = read_run(out / "long")
    assert meta["status"] == "completed" and list(metrics["epoch"]) == list(range(1, 41))


def test_divergence_stops_the_run(tmp_path, cli):
    config = write_config(tmp_path / "hot.yaml", norm={"kind": "none"}, train={"lr": 1e20, "epochs": 3})
    result = cli("run", config, "--out-dir", tmp_path / "runs")
    assert result.exit_code == 3
    assert "diverged: hot: training loss is nan" in result.output
    meta, metrics, steps = read_run(tmp_path / "runs/hot")
    assert meta["status"] == "diverged" and "training loss is nan" in meta["error"]
    assert len(metrics) == meta["epochs_completed"] < 3
    assert not (tmp_path / "runs/hot/model.pt").exists()
    result = cli("compare", tmp_path / "runs", "--format", "json")
    assert json.loads(result.stdout)["runs"][0]["status"] == "diverged"


def test_divergence_can_be_recorded_and_continued(tmp_path, cli):
    config = write_config(
        tmp_path / "hot.yaml", norm={"kind": "none"}, train={"lr": 1e20, "epochs": 2, "on_nan": "continue"}
    )
    assert cli("run", config, "--out-dir", tmp_path / "runs").exit_code == 0
    meta, metrics, _ = read_run(tmp_path / "runs/hot")
    assert meta["status"] == "completed" and metrics["train_loss"].isna().all()


def test_an_exception_marks_the_run_failed(tmp_path, cli, monkeypatch):
    def out_of_memory(self, epoch):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(Trainer, "run_epoch", out_of_memory)
    result = cli("run", write_config(tmp_path / "c.yaml"), "--out-dir", tmp_path / "runs")
    assert result.exit_code == 1
    saved = tmp_path / "runs/c/traceback.txt"
    assert result.stderr.strip() == (
        f"failed: c: RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (traceback: {saved}; "
        "--debug prints it)"
    )
    assert "in out_of_memory" in saved.read_text() and "Traceback" not in result.stderr
    meta = read_run(tmp_path / "runs/c")[0]
    assert meta["status"] == "failed" and "CUDA out of memory" in meta["error"]
    # --debug (anywhere on the line, or BNBENCH_DEBUG=1) prints the failure's traceback itself
    result = cli("run", tmp_path / "c.yaml", "--out-dir", tmp_path / "runs", "--debug")
    assert result.exit_code == 1 and "Traceback (most recent call last)" in result.stderr
    assert "in out_of_memory" in result.stderr and "failed: c-2: RuntimeError" in result.stderr


def test_resume_refusals(tmp_path, cli):
    config, out = write_config(tmp_path / "c.yaml", train={"epochs": 1}), tmp_path / "runs"
    assert cli("run", config, "--out-dir", out).exit_code == 0
    result = cli("run", "--resume", out / "c")
    assert result.exit_code == 2 and "the run is already completed" in result.stderr
    meta_path = out / "c/meta.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "status": "interrupted"}))
    result = cli("run", "--resume", out / "c", "--set", "train.lr=0.5")
    assert result.exit_code == 2
    assert "the config differs from the run's saved config.yaml in train.lr" in result.stderr
    result = cli("run", "--resume", tmp_path)
    assert result.exit_code == 2 and "not a bnbench run directory" in result.stderr


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(b"\x00\x00\x00\x00" + data[4:] if how == "magic" else data[:-100])


@pytest.mark.parametrize(
    ("setup", "args", "message"),
    [
        ("none", ["--device", "cuda"], "--device cuda: cuda is not available on this machine"),
        ("none", ["--device", "tpu"], "Invalid value for '--device': 'tpu' is not one of 'auto', 'cpu', 'cuda', 'mps'"),
        ("none", ["--epochs", "abc"], "Invalid value for '--epochs': Input should be a valid integer"),
        ("none", ["--bogus"], "No such option: --bogus"),
        ("none", ["--set", "train.lr"], "--set train.lr: expected dotted.key=value"),
        ("none", ["--set", "trian.lr=1"], "--set trian.lr=1: 'trian': unknown key (did you mean 'train'?)"),
        ("none", ["--set", "train.lr=-2"], "--set train.lr=-2: train.lr: must be > 0, got -2.0"),
        ("none", ["--set", "train.lr=[1"], "--set train.lr=[1: malformed YAML at line 1"),
        ("none", ["--set", "train.batch_size=5000"], "train.batch_size: 5000 is larger than the training set (256"),
        ("none", ["--seeds", "0,x"], "--seeds: expected seeds like 0-4, 0,1,2 or [0, 1, 2], got '0,x'"),
        ("none", ["--out-dir", "{tmp}/c.yaml/runs"], "cannot create it"),
        ("mnist", ["--data-dir", "{tmp}/nowhere"], "mnist: missing train-images-idx3-ubyte, train-labels-idx1-ubyte"),
        ("magic", ["--data-dir", "{tmp}/data"], "train-images-idx3-ubyte: not an IDX images file (wrong magic number)"),
        ("size", ["--data-dir", "{tmp}/data"], "train-images-idx3-ubyte: 200620 bytes, expected 200720 for 256 images"),
        (
            "label",
            ["--data-dir", "{tmp}/data"],
            "train-labels-idx1-ubyte: label 12 at item 3 is outside the classes 0-9",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_and_creates_nothing(tmp_path, cli, setup, args, message):
    if setup == "none":
        config = write_config(tmp_path / "c.yaml", data={"train_subset": None})
        config.write_text(config.read_text().replace("train_subset: null", "train_subset: 256"))
    else:
        config = write_config(tmp_path / "c.yaml", data={"dataset": "mnist", "train_subset": None})
        root = write_mnist(tmp_path / "data")
        if setup == "magic":
            _corrupt(root / "MNIST/raw/train-images-idx3-ubyte", "magic")
        if setup == "size":
            _corrupt(root / "MNIST/raw/train-images-idx3-ubyte", "size")
        if setup == "label":
            labels = bytearray((root / "MNIST/raw/train-labels-idx1-ubyte").read_bytes())
            labels[8 + 3] = 12
            (root / "MNIST/raw/train-labels-idx1-ubyte").write_bytes(bytes(labels))
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = cli("run", config, "--out-dir", tmp_path / "runs", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert "loading data" not in result.stdout  # refused before any work started
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "nowhere").exists()  # a failed download attempt leaves nothing behind


def test_debug_shows_the_traceback(tmp_path, cli):
    result = cli("--debug", "run", tmp_path / "missing.yaml")
    assert result.exit_code == 2 and "Traceback" in result.stderr
    result = cli("run", tmp_path / "missing.yaml", "--debug")  # after the subcommand too
    assert result.exit_code == 2 and "Traceback" in result.stderr
    result = cli("run", tmp_path / "missing.yaml")  # and never into the next invocation
    assert result.exit_code == 2 and "Traceback" not in result.stderr


def test_resume_reads_the_data_the_run_started_with(tmp_path, cli, mnist_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ./data does not exist here
    monkeypatch.delenv("BNBENCH_DATA_DIR", raising=False)
    config = write_config(tmp_path / "m.yaml", data={"dataset": "mnist", "train_subset": None}, train={"epochs": 1})
    assert cli("run", config, "--data-dir", mnist_dir, "--out-dir", tmp_path / "runs").exit_code == 0
    meta_path = tmp_path / "runs/m/meta.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "status": "interrupted"}))
    result = cli("run", "--resume", tmp_path / "runs/m")
    assert result.exit_code == 0, result.output
    assert read_run(tmp_path / "runs/m")[0]["status"] == "completed"


def test_resume_refuses_a_config_edited_after_the_start(tmp_path, cli):
    run = _stopped_run(tmp_path, epochs=30)
    saved = run / "config.yaml"
    saved.write_text(saved.read_text().replace("lr: 0.1", "lr: 0.05"))
    result = cli("run", "--resume", run)
    assert result.exit_code == 2
    assert "config.yaml was edited after the run started (train.lr)" in result.stderr
    assert read_run(run)[0]["status"] == "interrupted"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_stop_the_run_as_interrupted(tmp_path, sig):
    assert read_run(_stopped_run(tmp_path, sig))[0]["status"] == "interrupted"


def test_a_stop_between_configs_creates_no_directory_for_the_next(tmp_path, cli, monkeypatch):
    import bnbench.runs.execute as runs_module

    first, second = (write_config(tmp_path / f"{n}.yaml", train={"epochs": 1}) for n in ("first", "second"))
    real_run_job = runs_module.run_job

    def run_then_stop(job, data, device, root, out_dir, make_reporter, stop):
        result = real_run_job(job, data, device, root, out_dir, make_reporter, stop)
        stop.requested = True  # as if SIGTERM arrived right after the first run finished
        return result

    monkeypatch.setattr(runs_module, "run_job", run_then_stop)
    result = cli("run", first, second, "--out-dir", tmp_path / "runs")
    assert result.exit_code == 130
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["first"]


def test_a_stop_during_the_last_evaluation_is_not_reported_completed(tmp_path, cli, monkeypatch):
    from bnbench.training.train import Trainer

    real_run_epoch = Trainer.run_epoch

    def stop_in_last_eval(self, epoch):
        out = real_run_epoch(self, epoch)
        if epoch == self.cfg.train.epochs:
            self.should_stop.requested = True  # SIGTERM while the last epoch evaluated
        return out

    monkeypatch.setattr(Trainer, "run_epoch", stop_in_last_eval)
    config = write_config(tmp_path / "c.yaml", train={"epochs": 2})
    result = cli("run", config, "--out-dir", tmp_path / "runs")
    meta, metrics, _ = read_run(tmp_path / "runs/c")
    assert result.exit_code == 130 and meta["status"] == "interrupted" and len(metrics) == 2


def test_resume_of_a_run_that_never_recorded_says_so(tmp_path, cli):
    run = tmp_path / "runs/c"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("name: c\n")
    (run / ".meta.json.abc.tmp").write_text("{")
    result = cli("run", "--resume", run)
    assert result.exit_code == 2 and "started but never recorded anything; nothing to resume" in result.stderr


def test_a_duplicated_metrics_row_is_reported_by_resume_and_compare(tmp_path, cli):
    run = _stopped_run(tmp_path, epochs_first=2, epochs=30)
    lines = (run / "metrics.csv").read_text().splitlines()
    (run / "metrics.csv").write_text("\n".join([*lines, lines[1]]) + "\n")  # epoch 1 again at the end
    before = (run / "metrics.csv").read_text()
    result = cli("run", "--resume", run)
    assert result.exit_code == 2 and len(result.stderr.splitlines()) == 1
    assert f"metrics.csv, line {len(lines) + 1}: epoch 1 after" in result.stderr
    assert (run / "metrics.csv").read_text() == before  # nothing changed
    shown = cli("compare", run.parent)
    assert (
        shown.exit_code == 2
        and "metrics.csv, line 4: epoch 1 after 2 (a duplicated or reordered row); skipped" in shown.stderr
    )


def test_a_garbage_number_is_named_with_its_file_and_line(tmp_path, cli):
    run = _stopped_run(tmp_path, epochs_first=2, epochs=30)
    text = (run / "steps.csv").read_text().splitlines()
    text[2] = text[2].replace(text[2].split(",")[3], "abc", 1)
    (run / "steps.csv").write_text("\n".join(text) + "\n")
    result = cli("run", "--resume", run)
    assert result.exit_code == 2 and "steps.csv, line 3: train_loss is 'abc', not a number" in result.stderr


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("empty", "checkpoint.pt: damaged checkpoint (EOFError); start a new run"),
        ("truncated", "checkpoint.pt: damaged checkpoint ("),
        ("garbage", "checkpoint.pt: damaged checkpoint ("),
        ("other model", "checkpoint.pt: the checkpoint is of a different model (fc1.weight)"),
        ("not ours", "checkpoint.pt: not a bnbench checkpoint (expected model, optimizer, order, rng, epoch)"),
        ("meta shape", "meta.json is unreadable (meta.json: resumed_at is 'yesterday', not a list)"),
        ("meta status", "meta.json is unreadable (meta.json: status is '5', not a str)"),
    ],
)
def test_damaged_resume_files_are_one_line_exit_2_and_nothing_changes(tmp_path, cli, damage, message):
    run = _stopped_run(tmp_path, epochs_first=1, epochs=30)
    ckpt, meta = run / "checkpoint.pt", run / "meta.json"
    data = ckpt.read_bytes()
    if damage == "empty":
        ckpt.write_bytes(b"")
    elif damage == "truncated":
        ckpt.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        ckpt.write_bytes(os.urandom(len(data)))
    elif damage == "other model":
        state = torch.load(ckpt, weights_only=False)
        state["model"] = {k + "x" if "weight" in k else k: v for k, v in state["model"].items()}
        torch.save(state, ckpt)
    elif damage == "not ours":
        torch.save({"weights": 1}, ckpt)
    elif damage == "meta shape":
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "resumed_at": "yesterday"}))
    elif damage == "meta status":
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "status": 5}))
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    result = cli("run", "--resume", run)
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_a_stopped_run_prints_the_command_that_continues_it(tmp_path):
    config, out = _slow_config(tmp_path, epochs=30), tmp_path / "runs"
    (out / "long").mkdir(parents=True)  # taken: the run goes to long-2 and says so
    proc = _start(config, out)
    _wait_for_epochs(out / "long-2", 1, proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert stdout.startswith("loading data: synthetic\n")
    assert f"long-2: writing {out / 'long-2'} ({out / 'long'} was taken)" in stdout
    assert f"to continue: bnbench run --resume {out / 'long-2'}" in stderr


def _disk_full_for(monkeypatch, marker: str) -> None:
    """Make fsync of any file whose name contains `marker` fail as a full disk does (Linux /proc)."""
    real = os.fsync

    def fsync(fd: int) -> None:
        if marker in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds file names through /proc")
def test_a_full_disk_during_a_checkpoint_marks_the_run_failed_and_leaves_no_temp_file(tmp_path, cli, monkeypatch):
    config = write_config(tmp_path / "c.yaml", train={"epochs": 2})
    _disk_full_for(monkeypatch, ".checkpoint.pt.")
    result = cli("run", config, "--out-dir", tmp_path / "runs")
    assert result.exit_code == 1
    meta = json.loads((tmp_path / "runs/c/meta.json").read_text())
    assert meta["status"] == "failed" and "No space left on device" in meta["error"]
    assert not [p for p in (tmp_path / "runs/c").iterdir() if p.name.endswith(".tmp")]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds file names through /proc")
def test_a_full_disk_at_the_start_leaves_no_run_directory(tmp_path, cli, monkeypatch):
    config = write_config(tmp_path / "c.yaml", train={"epochs": 2})
    _disk_full_for(monkeypatch, ".config.yaml.")
    result = cli("run", config, "--out-dir", tmp_path / "runs")
    assert result.exit_code == 1 and "No space left on device" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert list((tmp_path / "runs").iterdir()) == []


def test_the_same_run_command_typed_again_after_ctrl_c_continues(tmp_path):
    config, out = _slow_config(tmp_path, epochs=8), tmp_path / "runs"
    seeds = ("--seeds", "0,1,2")
    proc = _start(config, out, *seeds)
    _wait_for_epochs(out / "long-s0", 1, proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "type it again: bnbench run" in stderr and "--seeds 0,1,2" in stderr
    stopped = json.loads((out / "long-s0/meta.json").read_text())
    assert stopped["status"] == "interrupted" and 1 <= stopped["epochs_completed"] < 8

    def again(*extra: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "bnbench", "run", str(config), "--out-dir", str(out), "--device", "cpu", *seeds]
        return subprocess.run(cmd + list(extra), capture_output=True, text=True, timeout=300)

    dry = again("--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert f"resume  long-s0  ->  {out / 'long-s0'}" in dry.stdout
    assert f"start   long-s2  ->  {out / 'long-s2'}" in dry.stdout and "long-s0-2" not in dry.stdout
    assert not (out / "long-s2").exists()  # a dry run creates nothing
    done = again()
    assert done.returncode == 0, done.stderr
    assert "long-s0: writing" in done.stdout and "resuming from epoch" in done.stdout
    assert sorted(p.name for p in out.iterdir()) == ["long-s0", "long-s1", "long-s2"]  # no long-s0-2
    for name in ("long-s0", "long-s1", "long-s2"):
        meta = json.loads((out / name / "meta.json").read_text())
        assert meta["status"] == "completed" and meta["epochs_completed"] == 8
        assert len((out / name / "metrics.csv").read_text().splitlines()) == 9  # one row per epoch, none twice
    other = subprocess.run(
        [sys.executable, "-m", "bnbench", "run", str(config), "--out-dir", str(out), "--seeds", "0", "--set",
         "train.lr=0.2", "--dry-run"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert f"start   long-s0  ->  {out / 'long-s0-2'}" in other.stdout  # another config: a new folder
