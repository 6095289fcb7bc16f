"""The sweep engine through the real CLI: parallel workers, skip/resume/retry, SIGKILL, locks, Ray, pivots."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from bnbench.evidence.compare import compare, find_runs
from bnbench.runs.rundir import LockHeld, RunLock

from conftest import read_run, write_config

TIMING = ["epoch_seconds", "examples_per_second"]


def _metrics(folder: Path) -> dict[str, pd.DataFrame]:
    return {p.name: pd.read_csv(p / "metrics.csv").drop(columns=TIMING) for p in sorted(folder.iterdir()) if p.is_dir()}


def _study(tmp_path: Path, name: str = "st", epochs: int = 2, subset: int = 256, **matrix: list) -> Path:
    write_config(tmp_path / "base.yaml", data={"train_subset": subset}, train={"epochs": epochs})
    matrix = matrix or {"norm.kind": ["none", "torch"]}
    study = {"name": name, "base": "base.yaml", "matrix": matrix, "seeds": "0-1"}
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(study))
    return tmp_path / f"{name}.yaml"


def test_parallel_sweep_then_rerun_skips_everything(tmp_path, cli):
    study, out = _study(tmp_path), tmp_path / "runs"
    result = cli("sweep", study, "--out-dir", out, "--jobs", "2")
    assert result.exit_code == 0, result.output
    folder = out / "st"
    assert sorted(p.name for p in folder.iterdir() if p.is_dir()) == [
        "kind=none-s0", "kind=none-s1", "kind=torch-s0", "kind=torch-s1"]  # fmt: skip
    assert (folder / "study.yaml").is_file() and "summary: 4 completed" in result.stdout
    assert "completed   kind=torch-s1" in result.stdout  # one line per finished run off a terminal
    again = cli("sweep", folder, "--jobs", "2")  # the saved study re-runs from its folder
    assert again.exit_code == 0 and "0 to run, 4 skipped" in again.stdout
    sequential = cli("sweep", study, "--out-dir", tmp_path / "one", "--jobs", "1")
    assert sequential.exit_code == 0
    parallel, one = _metrics(folder), _metrics(tmp_path / "one/st")
    for name in parallel:
        pd.testing.assert_frame_equal(parallel[name], one[name])


def test_a_changed_study_is_refused_with_the_difference_named(tmp_path, cli):
    study, out = _study(tmp_path, epochs=1), tmp_path / "runs"
    assert cli("sweep", study, "--out-dir", out, "--jobs", "2").exit_code == 0
    changed = _study(tmp_path, epochs=1, **{"norm.kind": ["none", "scratch"]})
    result = cli("sweep", changed, "--out-dir", out)
    assert result.exit_code == 2 and "differs from the one saved there in matrix.norm.kind" in result.stderr


def test_skip_resume_and_retry_rules(tmp_path, cli):
    study, out = _study(tmp_path, epochs=2), tmp_path / "runs"
    assert cli("sweep", study, "--out-dir", out, "--jobs", "2").exit_code == 0
    folder = out / "st"
    for name, status in (("kind=none-s0", "interrupted"), ("kind=none-s1", "failed"), ("kind=torch-s0", "diverged")):
        meta = json.loads((folder / name / "meta.json").read_text())
        meta["status"] = status
        (folder / name / "meta.json").write_text(json.dumps(meta))
    dry = cli("sweep", folder, "--dry-run").stdout
    assert "resume  kind=none-s0" in dry and "skip    kind=none-s1  (failed earlier" in dry
    assert "skip    kind=torch-s0  (diverged)" in dry and "skip    kind=torch-s1  (completed)" in dry
    retry = cli("sweep", folder, "--dry-run", "--retry-failed").stdout
    assert "resume  kind=none-s1" in retry
    assert cli("sweep", folder, "--retry-failed", "--jobs", "2").exit_code == 0
    assert read_run(folder / "kind=none-s1")[0]["status"] == "completed"


def test_a_failing_run_does_not_stop_the_others(tmp_path, cli):
    study, out = _study(tmp_path, epochs=1), tmp_path / "runs"
    (out / "st").mkdir(parents=True)
    (out / "st/kind=torch-s0").write_text("a file where the run directory should go")
    result = cli("sweep", study, "--out-dir", out, "--jobs", "2")
    assert result.exit_code == 1
    assert "summary: 3 completed, 1 failed" in result.stdout and "failed: kind=torch-s0:" in result.stderr
    assert sum(1 for p in (out / "st").iterdir() if p.is_dir()) == 3


def _sweep_process(study: Path, out: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bnbench", "sweep", str(study), "--out-dir", str(out), "--jobs", "2"]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_of_the_sweep_then_rerun_equals_an_uninterrupted_sweep(tmp_path):
    study = _study(tmp_path, epochs=12, subset=1024)
    out = tmp_path / "killed"
    proc = _sweep_process(study, out)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # kill once some run has finished an epoch
        if any(len(p.read_text().splitlines()) > 1 for p in out.glob("st/*/metrics.csv")):
            break
        time.sleep(0.05)
    proc.kill()
    proc.communicate(timeout=30)
    time.sleep(1)  # the workers get SIGTERM from the kernel and record `interrupted`
    statuses = {json.loads(p.read_text())["status"] for p in out.glob("st/*/meta.json")}
    assert "interrupted" in statuses and statuses <= {"interrupted", "completed"}, statuses
    rerun = _sweep_process(study, out)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    straight = _sweep_process(study, tmp_path / "straight")
    straight.communicate(timeout=300)
    killed, whole = _metrics(out / "st"), _metrics(tmp_path / "straight/st")
    assert list(killed) == list(whole) == ["kind=none-s0", "kind=none-s1", "kind=torch-s0", "kind=torch-s1"]
    for name in whole:
        pd.testing.assert_frame_equal(killed[name], whole[name])


def test_two_resumes_of_one_run_one_runs_one_is_refused(tmp_path, cli):
    config = write_config(tmp_path / "c.yaml", data={"train_subset": 1024}, train={"epochs": 30})
    out = tmp_path / "runs"
    first = subprocess.Popen([sys.executable, "-m", "bnbench", "run", str(config), "--out-dir", str(out)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    while not (out / "c/metrics.csv").is_file() or len((out / "c/metrics.csv").read_text().splitlines()) < 2:
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    first.communicate(timeout=60)
    resume = [sys.executable, "-m", "bnbench", "run", "--resume", str(out / "c")]
    resumes = [subprocess.Popen(resume, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in resumes]
    codes = sorted(p.returncode for p in resumes)
    assert codes == [0, 2], outputs
    refused = next(err for p, (_, err) in zip(resumes, outputs, strict=True) if p.returncode == 2)
    assert "in use by pid" in refused or "still running" in refused or "already completed" in refused
    epochs = list(pd.read_csv(out / "c/metrics.csv")["epoch"])
    assert epochs == list(range(1, 31))


def test_the_lock_names_its_holder_and_is_released(tmp_path):
    lock = RunLock(tmp_path).acquire()
    with pytest.raises(LockHeld, match=f"in use by pid {os.getpid()}"):
        RunLock(tmp_path).acquire()
    lock.release()
    RunLock(tmp_path).acquire().release()


def test_run_with_jobs_uses_the_engine_and_gives_the_same_numbers(tmp_path, cli):
    config = write_config(tmp_path / "c.yaml", train={"epochs": 1})
    assert cli("run", config, "--seeds", "0-2", "--jobs", "2", "--out-dir", tmp_path / "par").exit_code == 0
    assert cli("run", config, "--seeds", "0-2", "--out-dir", tmp_path / "seq").exit_code == 0
    par, seq = _metrics(tmp_path / "par"), _metrics(tmp_path / "seq")
    assert list(par) == ["c-s0", "c-s1", "c-s2"]
    for name in seq:
        pd.testing.assert_frame_equal(par[name], seq[name])


def test_ray_backend_gives_the_same_metrics_as_the_local_pool(tmp_path, cli):
    """In its own process, as a user runs it: a Ray cluster started inside the test process would outlive
    the test there (its processes, threads and signal handlers) and meet every later test."""
    pytest.importorskip("ray")
    study = _study(tmp_path, epochs=1)
    ray_run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bnbench",
            "sweep",
            str(study),
            "--out-dir",
            str(tmp_path / "ray"),
            "--backend",
            "ray",
            "--cpus-per-run",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ray_run.returncode == 0, ray_run.stderr
    assert cli("sweep", study, "--out-dir", tmp_path / "local", "--jobs", "2").exit_code == 0
    on_ray, local = _metrics(tmp_path / "ray/st"), _metrics(tmp_path / "local/st")
    assert list(on_ray) == list(local) and len(local) == 4
    for name in local:
        pd.testing.assert_frame_equal(on_ray[name], local[name])


def test_compare_shows_differing_keys_and_a_pivot_grid(tmp_path, cli):
    study = _study(tmp_path, epochs=1, **{"norm.kind": ["none", "torch"], "train.lr": [0.05, 0.1]})
    assert cli("sweep", study, "--out-dir", tmp_path / "runs", "--jobs", "2").exit_code == 0
    runs, _ = find_runs([tmp_path / "runs/st"])
    comp = compare(runs, pivot="train.lr", by="norm.kind", baseline="norm.kind=none")
    assert set(comp.keys) == {"norm.kind", "train.lr", "train.seed"}
    assert len(comp.pivot) == 4 and set(comp.pivot["n"]) == {2}
    torch_cells = comp.pivot[comp.pivot["by"] == "torch"]
    assert torch_cells["delta"].notna().all() and torch_cells["p_value"].notna().all()
    assert comp.pivot[comp.pivot["by"] == "none"]["delta"].isna().all()
    assert sorted(comp.groups["group"]) == ["kind=none,lr=0.05", "kind=none,lr=0.1", "kind=torch,lr=0.05",
                                            "kind=torch,lr=0.1"]  # fmt: skip
    table = cli("compare", tmp_path / "runs/st", "--pivot", "train.lr", "--by", "norm.kind",
                "--baseline", "norm.kind=none")  # fmt: skip
    assert table.exit_code == 0 and "final test_acc by train.lr and norm.kind" in table.stdout
    assert re.search(r"┃ kind +┃", table.stdout) and re.search(r"┃ +lr ┃", table.stdout)  # differing keys are columns
    csv = cli("compare", tmp_path / "runs/st", "--pivot", "train.lr", "--by", "norm.kind", "--format", "csv").stdout
    assert csv.splitlines()[0] == "train.lr,norm.kind,n,mean,std,diverged,delta,delta_ci95_low,delta_ci95_high,p_value"
    bad = cli("compare", tmp_path / "runs/st", "--pivot", "train.lrr", "--by", "norm.kind")
    assert bad.exit_code == 2 and "--pivot train.lrr: not a config key" in bad.stderr


def test_a_hidden_override_is_its_own_group_named_by_the_key(tmp_path, cli):
    config = write_config(tmp_path / "c.yaml", train={"epochs": 1})
    out = tmp_path / "runs"
    assert cli("run", config, "--seeds", "0,1", "--out-dir", out).exit_code == 0
    assert cli("run", config, "--seeds", "0,1", "--out-dir", out, "--set", "model.hidden=[16,16]").exit_code == 0
    runs, _ = find_runs([out])
    assert sorted(compare(runs).groups["group"]) == ["c[hidden=16]", "c[hidden=16x16]"]


def test_compare_does_not_import_torch(tmp_path):
    modules = "bnbench.cli.app, bnbench.evidence.compare, bnbench.evidence.plots, bnbench.runs.sweep"
    code = f"import sys, {modules}; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


def test_ray_missing_is_one_line_naming_the_extra(tmp_path, cli, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    study = _study(tmp_path, epochs=1)
    result = cli("sweep", study, "--out-dir", tmp_path / "runs", "--backend", "ray")
    assert result.exit_code == 2
    assert result.stderr == "error: --backend ray: Ray is not installed; pip install 'bnbench[ray]'\n"
    assert not (tmp_path / "runs/st").exists()


def test_a_failed_atomic_write_leaves_no_temporary_file(tmp_path):
    from bnbench.records import atomic_write

    (tmp_path / "target").mkdir()  # os.replace cannot put a file over a directory
    with pytest.raises(OSError):
        atomic_write(tmp_path / "target", "data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


def test_jobs_takes_a_number_or_auto(tmp_path, cli):
    config = write_config(tmp_path / "c.yaml", train={"epochs": 1})
    for bad in ("0", "x", "-2", "²", "5000", "9" * 40):
        result = cli("run", config, "--jobs", bad, "--out-dir", tmp_path / "runs")
        assert result.exit_code == 2 and "expected a number of runs at once (1 to 1024), or auto" in result.stderr
    assert not (tmp_path / "runs").exists()
    result = cli("sweep", config, "--grid", "train.lr=0.1,0.2", "--jobs", "auto", "--dry-run")
    assert result.exit_code == 0 and "2 runs; 2 to run" in result.stdout


def test_a_study_and_runs_saved_before_a_key_existed_still_match(tmp_path, cli):
    """Upgrading bnbench adds config keys with defaults: a saved study, and a run's meta.json, that lack them
    trained with those defaults, so neither differs (the real case: issue 19's new keys)."""
    study, out = _study(tmp_path, epochs=2), tmp_path / "runs"
    assert cli("sweep", study, "--out-dir", out, "--jobs", "1").exit_code == 0
    folder = out / "st"
    saved = yaml.safe_load((folder / "study.yaml").read_text())
    del saved["base"]["train"]["schedule"], saved["base"]["norm"]["noise"]
    (folder / "study.yaml").write_text(yaml.safe_dump(saved))
    meta = json.loads((folder / "kind=none-s0" / "meta.json").read_text())
    del meta["config"]["train"]["schedule"]
    meta["status"] = "interrupted"
    (folder / "kind=none-s0" / "meta.json").write_text(json.dumps(meta))
    again = cli("sweep", study, "--out-dir", out, "--jobs", "1")
    assert again.exit_code == 0, again.output
    assert "1 to run, 3 skipped" in again.stdout


def test_run_and_sweep_with_any_jobs_give_the_same_numbers_with_the_same_threads(tmp_path):
    """Same config and seed, same numbers: `run`, `sweep --jobs 1` and `sweep --jobs 2` train with one
    default thread count (recorded in meta.json) and write identical metrics."""
    config = write_config(tmp_path / "c.yaml", model={"hidden": [64, 64]}, data={"train_subset": 512})

    def bnbench(*args: object) -> None:
        done = subprocess.run([sys.executable, "-m", "bnbench", *map(str, args)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr

    bnbench("run", config, "--seeds", "0,1", "--out-dir", tmp_path / "run")
    for jobs in ("1", "2"):
        bnbench("sweep", config, "--grid", "norm.kind=scratch", "--seeds", "0,1", "--jobs", jobs, "--out-dir",
                tmp_path / f"jobs{jobs}")  # fmt: skip
    bnbench("run", config, "--seed", "0", "--threads-per-job", "2", "--out-dir", tmp_path / "two")
    alone = _metrics(tmp_path / "run")
    for jobs in ("1", "2"):
        swept = _metrics(tmp_path / f"jobs{jobs}/c")
        assert len(swept) == 2
        for seed in (0, 1):
            (name,) = [n for n in swept if n.endswith(f"-s{seed}")]
            pd.testing.assert_frame_equal(swept[name], alone[f"c-s{seed}"])
    threads = {json.loads(p.read_text())["threads"] for p in tmp_path.glob("jobs*/c/*/meta.json")}
    threads |= {json.loads(p.read_text())["threads"] for p in (tmp_path / "run").glob("*/meta.json")}
    assert threads == {1}
    assert json.loads((tmp_path / "two/c/meta.json").read_text())["threads"] == 2  # honoured for a single run


def test_a_dry_run_estimates_a_config_that_diverges_instead_of_failing(tmp_path, cli):
    study = _study(tmp_path, epochs=1, **{"norm.kind": ["none"], "train.lr": [1e30]})
    result = cli("sweep", study, "--dry-run", "--out-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    assert "estimated wall time" in result.stdout and not (tmp_path / "runs").exists()
