"""Nothing overwritten, nothing mixed, nothing lost: sweeps that race, die or meet damaged runs, tried with
real `bnbench` processes (signals, kills, two sweeps at once) and with hostile inputs."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import write_config


def _study(tmp_path: Path, epochs: int = 2, subset: int = 256, seeds: str = "0-1", **extra: object) -> Path:
    base = write_config(tmp_path / "base.yaml", data={"train_subset": subset}, train={"epochs": epochs})
    study = {"name": "st", "base": str(base), "matrix": {"norm.kind": ["none", "scratch"]}, "seeds": seeds, **extra}
    path = tmp_path / "st.yaml"
    path.write_text(yaml.safe_dump(study))
    return path


def _sweep(*args: object) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bnbench", "sweep", *map(str, args), "--device", "cpu"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _metas(folder: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted(folder.glob("*/meta.json"))}


def _wait(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("timed out")


def _running(folder: Path) -> dict[str, dict]:
    return {name: meta for name, meta in _metas(folder).items() if meta["status"] == "running"}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (dead, not yet reaped) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_a_killed_worker_fails_only_its_own_run_and_the_rest_go_on(tmp_path):
    study = _study(tmp_path, epochs=30, subset=1024, seeds="0-2")
    proc = _sweep(study, "--out-dir", tmp_path / "runs", "--jobs", "2")
    folder = tmp_path / "runs/st"
    _wait(lambda: len(_running(folder)) == 2, proc)
    victim, meta = sorted(_running(folder).items())[0]
    os.kill(meta["pid"], signal.SIGKILL)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err
    metas = _metas(folder)
    assert len(metas) == 6  # every run was started: the pool was replaced
    assert metas[victim]["status"] == "failed" and "worker process died (killed by signal 9)" in metas[victim]["error"]
    assert [m["status"] for n, m in metas.items() if n != victim] == ["completed"] * 5
    assert "5 completed, 1 failed" in out


def test_a_stop_of_a_one_job_sweep_starts_no_new_run(tmp_path):
    study = _study(tmp_path, epochs=30, subset=1024, seeds="0-2")
    proc = _sweep(study, "--out-dir", tmp_path / "runs", "--jobs", "1")
    folder = tmp_path / "runs/st"
    _wait(lambda: len(_running(folder)) == 1, proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    time.sleep(2)  # nothing may start after the sweep said it stopped
    assert [m["status"] for m in _metas(folder).values()] == ["interrupted"]


def test_workers_do_not_outlive_a_killed_sweep(tmp_path):
    study = _study(tmp_path, epochs=200, subset=1024)
    proc = _sweep(study, "--out-dir", tmp_path / "runs", "--jobs", "2")
    folder = tmp_path / "runs/st"
    _wait(lambda: len(_running(folder)) == 2, proc)
    pids = [m["pid"] for m in _running(folder).values()]
    proc.kill()
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    assert not any(_alive(p) for p in pids)
    assert {m["status"] for m in _metas(folder).values()} == {"interrupted"}


def test_a_closed_terminal_leaves_every_run_interrupted_and_resumable(tmp_path):
    """SIGHUP to the sweep's whole process group (a terminal closing): the workers got it too, so the
    sweep's own forwarded stop must not count as their second (which aborts at once)."""
    study = _study(tmp_path, epochs=10, subset=1024)
    cmd = [sys.executable, "-m", "bnbench", "sweep", str(study), "--out-dir", str(tmp_path / "runs"), "--jobs", "2"]
    proc = subprocess.Popen(cmd + ["--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    folder = tmp_path / "runs/st"
    _wait(lambda: len(_running(folder)) == 2, proc)
    os.killpg(proc.pid, signal.SIGHUP)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    statuses = [m["status"] for m in _metas(folder).values()]
    assert "interrupted" in statuses and set(statuses) <= {"interrupted", "completed"}, statuses
    again = subprocess.run(cmd + ["--device", "cpu"], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert [m["status"] for m in _metas(folder).values()] == ["completed"] * 4


def test_two_sweeps_at_once_train_each_run_once(tmp_path):
    study = _study(tmp_path, epochs=3, subset=512, seeds="0-2")
    first, second = (_sweep(study, "--out-dir", tmp_path / "runs", "--jobs", "1") for _ in range(2))
    for proc in (first, second):
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
    metas = _metas(tmp_path / "runs/st")
    assert len(metas) == 6 and all(m["status"] == "completed" for m in metas.values())
    assert all("resumed_at" not in m for m in metas.values())
    for name in metas:  # each run's epochs written once: no run trained twice or over another
        rows = (tmp_path / "runs/st" / name / "metrics.csv").read_text().splitlines()
        assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]
    again = _sweep(study, "--out-dir", tmp_path / "runs")
    out, _ = again.communicate(timeout=120)
    assert again.returncode == 0 and "6 already done or skipped" in out


def test_an_edited_saved_study_does_not_resume_runs_under_another_config(tmp_path, cli):
    study = _study(tmp_path, epochs=30, subset=1024, seeds="0")
    proc = _sweep(study, "--out-dir", tmp_path / "runs", "--jobs", "1")
    folder = tmp_path / "runs/st"
    _wait(lambda: any(len(p.read_text().splitlines()) > 1 for p in folder.glob("*/metrics.csv")), proc)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    saved = yaml.safe_load((folder / "study.yaml").read_text())
    saved["base"]["train"]["epochs"] = 8
    (folder / "study.yaml").write_text(yaml.safe_dump(saved))
    before = {p: p.read_bytes() for p in folder.glob("*/*") if p.is_file() and p.name != ".lock"}
    result = cli("sweep", folder)
    assert result.exit_code == 2
    assert "started with another config than the study now asks for (train.epochs)" in result.stderr
    assert {p: p.read_bytes() for p in before} == before


def test_a_moved_study_folder_reruns_where_it_is(tmp_path, cli):
    study = _study(tmp_path, seeds="0")
    assert cli("sweep", study, "--out-dir", tmp_path / "runs", "--jobs", "1").exit_code == 0
    (tmp_path / "runs/st").rename(tmp_path / "moved")
    result = cli("sweep", tmp_path / "moved", "--jobs", "1")
    assert result.exit_code == 0 and "2 already done or skipped" in result.stdout
    assert not (tmp_path / "runs/st").exists()


def test_failed_runs_keep_the_sweep_failing_until_retried(tmp_path, cli):
    study = _study(tmp_path, seeds="0")
    assert cli("sweep", study, "--out-dir", tmp_path / "runs", "--jobs", "1").exit_code == 0
    meta_path = tmp_path / "runs/st/kind=none-s0/meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "status": "failed", "error": "OSError: No space left on device"}))
    result = cli("sweep", tmp_path / "runs/st", "--jobs", "1")
    assert result.exit_code == 1 and "1 failed earlier: kind=none-s0 (--retry-failed runs them again)" in result.stderr


def test_a_study_never_goes_into_a_run_folder(tmp_path, cli):
    config = write_config(tmp_path / "lenet_bn.yaml", train={"epochs": 1})
    assert cli("run", config, "--out-dir", tmp_path / "runs").exit_code == 0
    result = cli("sweep", config, "--grid", "train.lr=0.1,1", "--out-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "holds a run, not a study" in result.stderr
    assert sorted(p.name for p in (tmp_path / "runs/lenet_bn").iterdir() if not p.name.startswith(".")) == sorted(
        ["config.yaml", "meta.json", "metrics.csv", "steps.csv", "checkpoint.pt", "model.pt"]
    )


def test_recorded_epochs_without_meta_are_never_started_over(tmp_path, cli):
    study = _study(tmp_path, seeds="0")
    assert cli("sweep", study, "--out-dir", tmp_path / "runs", "--jobs", "1").exit_code == 0
    run = tmp_path / "runs/st/kind=none-s0"
    (run / "meta.json").unlink()
    metrics = (run / "metrics.csv").read_bytes()
    result = cli("sweep", tmp_path / "runs/st", "--jobs", "1")
    assert "holds epochs but no meta.json; not touched" in result.stdout + result.stderr
    assert (run / "metrics.csv").read_bytes() == metrics


def test_report_never_replaces_files_it_did_not_write(tmp_path, cli):
    study = _study(tmp_path, seeds="0")
    assert cli("sweep", study, "--out-dir", tmp_path / "runs", "--jobs", "1").exit_code == 0
    mine = tmp_path / "myproject"
    mine.mkdir()
    (mine / "README.md").write_text("my notes")
    (mine / "photo.png").write_bytes(b"png")
    result = cli("report", tmp_path / "runs/st", "--out", mine)
    assert result.exit_code == 2 and "holds files that bnbench did not write" in result.stderr
    assert (mine / "README.md").read_text() == "my notes" and (mine / "photo.png").read_bytes() == b"png"
    result = cli("report", tmp_path / "runs/st")  # default: beside the study
    assert result.exit_code == 0 and (tmp_path / "runs/st/report/README.md").is_file()
    (tmp_path / "runs/st/report/mine.txt").write_text("keep")
    assert cli("report", tmp_path / "runs/st").exit_code == 0  # its own report folder: rewritten
    assert (tmp_path / "runs/st/report/mine.txt").read_text() == "keep"
    (tmp_path / "afile").write_text("x")
    result = cli("report", tmp_path / "runs/st", "--out", tmp_path / "afile/sub")
    assert result.exit_code == 2 and "is not a folder" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--seeds", "0-99999999999"], "at most 10,000 seeds"),
        (["--grid", "train.lr=0.1", "--grid", "train.lr=1"], "train.lr is already a --grid key"),
        (["--grid", "train.seed=0,1"], "seeds are not a grid key; use --seeds 0,1"),
        (["--grid", "train.lr=[0.1,"], "--grid train.lr=[0.1,"),
        (["--grid", "lr=0.1,1"], "--grid lr=0.1,1: 'lr': unknown key (did you mean train.lr?)"),
        (["--grid", "norm.kind=" + "x" * 300], "longer than 200 bytes"),
    ],
)
def test_bad_grids_are_one_line_naming_the_grid(tmp_path, cli, args, message):
    config = write_config(tmp_path / "c.yaml")
    result = cli("sweep", config, *args, "--out-dir", tmp_path / "runs")
    assert result.exit_code == 2 and message in result.stderr and "--set" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_a_plan_over_the_limit_is_refused_by_arithmetic(tmp_path, cli):
    config = write_config(tmp_path / "c.yaml")
    lrs = ",".join(str(i + 1) for i in range(400))
    start = time.monotonic()
    result = cli("sweep", config, "--grid", f"train.lr={lrs}", "--grid", f"train.batch_size={lrs}",
                 "--seeds", "0-9", "--dry-run")  # fmt: skip
    assert result.exit_code == 2 and "1,600,000 runs; a study has at most 100,000" in result.stderr
    assert time.monotonic() - start < 30  # refused before any cell is built (a loose bound, not a benchmark)


def test_which_form_sweep_takes_is_said(tmp_path, cli):
    config = write_config(tmp_path / "c.yaml")
    result = cli("sweep", config)
    assert result.exit_code == 2 and "is a config (one run)" in result.stderr and "--grid" in result.stderr
    result = cli("sweep", _study(tmp_path), "--grid", "train.lr=0.1,1")
    assert result.exit_code == 2 and "is a study file" in result.stderr
    result = cli("run", _study(tmp_path))
    assert result.exit_code == 2 and "is a study (a grid of runs): run it with `bnbench sweep" in result.stderr


def test_study_files_take_set_and_epochs_and_remember_them(tmp_path, cli):
    study = _study(tmp_path, seeds="0")
    result = cli("sweep", study, "--epochs", "1", "--set", "train.lr=0.05", "--out-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.stderr
    saved = yaml.safe_load((tmp_path / "runs/st/study.yaml").read_text())
    assert saved["set"] == {"train.epochs": 1, "train.lr": 0.05}
    result = cli("sweep", study, "--epochs", "2", "--out-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "set.train.epochs" in result.stderr


@pytest.mark.parametrize("name", ["bad\nname", "tab\there", "esc\x1b[31m"])
def test_control_characters_in_names_are_refused(tmp_path, cli, name):
    config = write_config(tmp_path / "c.yaml")
    result = cli("run", config, "--name", name, "--out-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "cannot be a directory name" in result.stderr
    result = cli("sweep", config, "--grid", "train.lr=0.1,1", "--name", name, "--out-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "cannot be a folder name" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_markup_in_names_is_shown_as_written(tmp_path, cli):
    config = write_config(tmp_path / "c.yaml", train={"epochs": 1})
    result = cli("run", config, "--name", "mlp[bn]", "--out-dir", tmp_path / "exp[/b]")
    assert result.exit_code == 0, result.stderr
    assert "mlp[bn]" in result.stdout
    result = cli("ls", tmp_path / "exp[/b]")
    assert result.exit_code == 0 and "mlp[bn]" in result.stdout


def test_seed_bounds_and_seed_with_seeds(tmp_path, cli):
    config = write_config(tmp_path / "c.yaml")
    result = cli("run", config, "--seed", str(2**32), "--out-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "train.seed" in result.stderr
    result = cli("run", config, "--seed", "1", "--seeds", "0,1", "--out-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "--seed and --seeds" in result.stderr
    bn_eval_one = write_config(tmp_path / "e.yaml", norm={"kind": "torch"},
                               train={"eval_batch_size": 1, "eval_bn": "batch"})  # fmt: skip
    result = cli("run", bn_eval_one, "--out-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "train.eval_bn batch evaluates with each test batch" in result.stderr
    assert not (tmp_path / "runs").exists()  # (with running statistics one image at a time runs: test_run.py)


def test_an_unreachable_ray_cluster_is_one_line_and_writes_nothing(tmp_path, cli):
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    study = _study(tmp_path, seeds="0")
    start = time.monotonic()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bnbench",
            "sweep",
            study,
            "--backend",
            "ray",
            "--address",
            f"127.0.0.1:{port}",
            "--out-dir",
            tmp_path / "runs",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )  # its own process: no Ray client state is left in the test process
    assert result.returncode == 2 and "no Ray cluster answers there" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()
    assert time.monotonic() - start < 60  # bounded, not Ray's minutes of retries (a loose bound)


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    """A finished two-run study, swept once (in its own process) for the tests that damage a copy of it."""
    folder = tmp_path_factory.mktemp("swept")
    study = _study(folder, seeds="0")
    done = subprocess.run([sys.executable, "-m", "bnbench", "sweep", study, "--out-dir", folder / "runs", "--jobs",
                           "1"], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    return folder / "runs"


@pytest.mark.parametrize("damage", ["fifo", "dev_zero", "config_string", "config_yaml", "steps_header", "naive_time",
                                    "bad_json"])  # fmt: skip
def test_a_damaged_run_is_skipped_with_one_line_and_the_rest_are_shown(tmp_path, cli, swept, damage):
    shutil.copytree(swept, tmp_path / "runs", symlinks=True)
    bad, good = tmp_path / "runs/st/kind=none-s0", "kind=scratch-s0"
    if damage == "fifo":
        (bad / "metrics.csv").unlink()
        os.mkfifo(bad / "metrics.csv")
    elif damage == "dev_zero":
        (bad / "metrics.csv").unlink()
        (bad / "metrics.csv").symlink_to("/dev/zero")
    elif damage == "config_string":
        (bad / "config.yaml").write_text("just a string\n")
    elif damage == "config_yaml":
        (bad / "config.yaml").write_text("model: {name: mlp\n")  # malformed YAML
    elif damage == "steps_header":
        (bad / "steps.csv").write_text("a,b\n1,2\n")
    elif damage == "naive_time":
        meta = json.loads((bad / "meta.json").read_text())
        (bad / "meta.json").write_text(json.dumps({**meta, "started_at": "2026-01-01T00:00:00",
                                                   "updated_at": "yesterday"}))  # fmt: skip
    else:
        (bad / "meta.json").write_text("{not json")
    for command in (["compare"], ["ls"], ["plot", "--out", tmp_path / "c.png"]):
        result = subprocess.run(
            [sys.executable, "-m", "bnbench", command[0], tmp_path / "runs/st", *command[1:]],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, (command, result.stderr)
        assert good in result.stdout or command[0] == "plot"
        assert "Traceback" not in result.stderr
        # a damaged config.yaml is a damaged run, though meta.json holds the config the run started with
        if damage != "naive_time" and command[0] != "ls":
            warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
            assert len(warnings) == 1 and str(bad) in warnings[0], result.stderr
    result = cli("report", tmp_path / "runs/st", "--out", tmp_path / "report")
    assert result.exit_code == 0, result.stderr


def test_value_errors_name_the_grid_or_the_study_file_never_an_unwritten_set(tmp_path, cli):
    config = write_config(tmp_path / "c.yaml")
    result = cli("sweep", config, "--grid", "train.lr=0.1,abc", "--out-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "--grid train.lr=abc" in result.stderr and "--set" not in result.stderr
    study = _study(tmp_path, matrix={"train.lr": [0.1, "abc"]})
    result = cli("sweep", study, "--out-dir", tmp_path / "runs")
    assert result.exit_code == 2 and f"{study}: matrix train.lr=abc" in result.stderr and "--set" not in result.stderr
    study = _study(tmp_path, matrix={"train.seed": [0, 1]})
    result = cli("sweep", study, "--out-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "seeds are not a matrix key" in result.stderr


def test_compare_of_runs_none_of_which_completed_lists_them(tmp_path, cli):
    study = _study(tmp_path, seeds="0")
    assert cli("sweep", study, "--out-dir", tmp_path / "runs", "--jobs", "1").exit_code == 0
    for meta_path in (tmp_path / "runs/st").glob("*/meta.json"):
        meta = json.loads(meta_path.read_text())
        meta_path.write_text(json.dumps({**meta, "status": "interrupted"}))
    for fmt in ("table", "csv", "json", "markdown"):
        result = cli("compare", tmp_path / "runs/st", "--format", fmt)
        assert result.exit_code == 0, result.stderr
        assert "kind=none-s0" in result.stdout
    result = cli("compare", tmp_path / "runs/st")
    assert "not in the seed groups (not completed): kind=none-s0 (interrupted)" in result.stdout


def test_ls_of_a_run_directory_lists_that_run_and_pipes_stay_in_their_cell(tmp_path, cli):
    config = write_config(tmp_path / "c.yaml", train={"epochs": 1})
    assert cli("run", config, "--name", "a|b", "--out-dir", tmp_path / "runs").exit_code == 0
    result = cli("ls", tmp_path / "runs/a|b", "--format", "json")
    assert result.exit_code == 0 and [r["run"] for r in json.loads(result.stdout)] == ["a|b"]
    markdown = cli("compare", tmp_path / "runs", "--format", "markdown").stdout
    row = next(line for line in markdown.splitlines() if "a\\|b" in line)
    header = next(line for line in markdown.splitlines() if line.startswith("| run"))
    assert row.replace("\\|", "").count("|") == header.count("|")  # the name did not add a column


def test_a_study_file_under_another_name_is_a_study_beside_the_first(tmp_path, cli):
    """`--name` gives a study file's variant (here --epochs 1) its own folder: the way the refusal names."""
    study, out = _study(tmp_path), tmp_path / "runs"
    first = cli("sweep", study, "--out-dir", out, "--dry-run")
    assert first.exit_code == 0, first.output
    variant = cli("sweep", study, "--epochs", "1", "--name", "variant", "--out-dir", out, "--dry-run")
    assert variant.exit_code == 0, variant.output
    assert "start   " in variant.stdout and "variant: " in variant.stdout
    bad = cli("sweep", study, "--name", "a/b", "--out-dir", out)
    assert bad.exit_code == 2 and "--name: 'a/b' cannot be a folder name" in bad.stderr
