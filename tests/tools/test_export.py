"""Export to TensorBoard and MLflow, read back with each library's own reader and compared with the CSVs."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import socket
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import write_config

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    from typer.testing import CliRunner

    from bnbench.cli.app import app

    folder = tmp_path_factory.mktemp("export")
    base = write_config(folder / "base.yaml", data={"train_subset": 256}, train={"epochs": 3})
    study = {"name": "st", "base": str(base), "matrix": {"norm.kind": ["none", "scratch"]}, "seeds": "0-1"}
    (folder / "st.yaml").write_text(yaml.safe_dump(study))
    result = CliRunner().invoke(app, ["sweep", str(folder / "st.yaml"), "--jobs", "1", "--out-dir", str(folder)])
    assert result.exit_code == 0, result.output
    return folder / "st"


def _close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7)  # TensorBoard keeps float32


def test_tensorboard_reads_back_every_value_of_the_csvs(study, tmp_path, cli):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = cli("export", study, "--to", "tensorboard", "--out", tmp_path / "tb")
    assert result.exit_code == 0, result.stderr
    runs = sorted(p.name for p in study.iterdir() if (p / "meta.json").exists())
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == runs
    for name in runs:
        events = EventAccumulator(str(tmp_path / "tb" / name), size_guidance={"scalars": 0})
        events.Reload()
        metrics, steps = pd.read_csv(study / name / "metrics.csv"), pd.read_csv(study / name / "steps.csv")
        for column in metrics.columns.drop("epoch"):
            scalars = events.Scalars(f"epoch/{column}")
            assert [s.step for s in scalars] == metrics["epoch"].tolist()
            assert all(_close(s.value, v) for s, v in zip(scalars, metrics[column], strict=True))
        times = [s.wall_time for s in events.Scalars("epoch/test_acc")]
        assert times == sorted(times) and times[0] > 1.7e9  # from meta.json's start and the epochs' seconds
        for column in ("train_loss", "train_acc", "examples_seen"):
            scalars = events.Scalars(f"step/{column}")
            assert [s.step for s in scalars] == steps["step"].tolist()
            assert all(_close(s.value, v) for s, v in zip(scalars, steps[column], strict=True))
        assert events.PluginTagToContent("hparams")  # the resolved config, as TensorBoard's hyperparameters
    again = cli("export", study, "--to", "tensorboard", "--out", tmp_path / "tb")
    assert again.exit_code == 2 and "exists already" in again.stderr


def test_mlflow_has_the_study_as_parent_and_every_value_of_the_csvs(study, tmp_path, cli, monkeypatch):
    from mlflow.tracking import MlflowClient

    here = tmp_path / "elsewhere"
    here.mkdir()
    monkeypatch.chdir(here)  # nothing may be written where the command runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = cli("export", study, "--to", "mlflow", "--tracking-uri", uri)
    assert result.exit_code == 0, result.stderr
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("bnbench")
    found = client.search_runs([experiment.experiment_id])
    parents = [r for r in found if r.info.run_name == "st"]
    children = {r.info.run_name: r for r in found if r.info.run_name != "st"}
    assert len(parents) == 1 and len(children) == 4
    for name, run in children.items():
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.info.status == "FINISHED"
        assert run.data.params["norm.kind"] == name.split("=")[1].split("-")[0]
        assert float(run.data.params["train.lr"]) == 0.1
        metrics = pd.read_csv(study / name / "metrics.csv")
        for column in ("test_acc", "train_loss", "epoch_seconds"):
            history = sorted(client.get_metric_history(run.info.run_id, column), key=lambda m: m.step)
            assert [m.step for m in history] == metrics["epoch"].tolist()
            assert [m.value for m in history] == pytest.approx(metrics[column].tolist(), rel=1e-12)
        steps = pd.read_csv(study / name / "steps.csv")
        history = sorted(client.get_metric_history(run.info.run_id, "step_train_loss"), key=lambda m: m.step)
        assert [m.value for m in history] == pytest.approx(steps["train_loss"].tolist(), rel=1e-12)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"metrics.csv", "steps.csv", "config.yaml", "meta.json"} <= artifacts
    assert list(here.iterdir()) == [] and (tmp_path / "mlartifacts").is_dir()


@pytest.mark.parametrize(("target", "extra"), [("tensorboard", "tensorboard"), ("mlflow", "mlflow")])
def test_a_missing_extra_is_one_line_naming_it(study, tmp_path, cli, monkeypatch, target, extra):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == target else real(name, *a))
    result = cli("export", study, "--to", target, "--out", tmp_path / "tb", "--tracking-uri", "sqlite:///x.db")
    assert result.exit_code == 2 and f"pip install 'bnbench[{extra}]'" in result.stderr
    assert not (tmp_path / "tb").exists()


def test_mlflow_params_are_whole_up_to_mlflows_limit_and_a_cut_is_marked(tmp_path, cli, monkeypatch):
    """Two MLPs with 170 and 180 hidden layers of width 8: model.hidden is over 500 characters and must reach
    MLflow whole (MLflow 3 takes 6,000), so the runs differ there. Under a lower limit the value is cut,
    ends in "…", is tagged, and one warning names the key (once for both runs)."""
    import mlflow.utils.validation
    from mlflow.tracking import MlflowClient

    config = write_config(tmp_path / "deep.yaml", norm={"kind": "none"}, data={"train_subset": 64},
                          train={"epochs": 1, "batch_size": 64})  # fmt: skip
    out = tmp_path / "runs"
    for depth in (170, 180):
        hidden = "model.hidden=[" + ",".join(["8"] * depth) + "]"
        result = cli("run", config, "--set", hidden, "--name", f"d{depth}", "--out-dir", out, "--device", "cpu")
        assert result.exit_code == 0, result.output

    def exported(uri: str) -> tuple[dict, object]:
        result = cli("export", out, "--to", "mlflow", "--tracking-uri", uri)
        assert result.exit_code == 0, result.stderr
        client = MlflowClient(uri)
        found = client.search_runs([client.get_experiment_by_name("bnbench").experiment_id])
        return {r.info.run_name: r for r in found}, result

    runs, result = exported(f"sqlite:///{tmp_path / 'whole.db'}")
    for depth in (170, 180):
        value = runs[f"d{depth}"].data.params["model.hidden"]
        assert value == str([8] * depth) and len(value) > 500
        assert "bnbench.cut_params" not in runs[f"d{depth}"].data.tags
    assert "warning" not in result.stderr

    monkeypatch.setattr(mlflow.utils.validation, "MAX_PARAM_VAL_LENGTH", 300)
    runs, result = exported(f"sqlite:///{tmp_path / 'cut.db'}")
    for name in ("d170", "d180"):
        value = runs[name].data.params["model.hidden"]
        assert len(value) == 300 and value.endswith("…") and value.startswith("[8, 8")
        assert runs[name].data.tags["bnbench.cut_params"] == "model.hidden"
        assert runs[name].data.params["norm.kind"] == "none"
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "model.hidden" in warnings[0] and "config.yaml" in warnings[0]


def _mlflow_runs(uri: str) -> list:
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("bnbench")
    return client.search_runs([experiment.experiment_id], run_view_type=ViewType.ALL)


def test_mlflow_export_twice_duplicates_nothing_and_a_changed_run_replaces_its_old_one(study, tmp_path, cli):
    copy = tmp_path / "st"
    shutil.copytree(study, copy)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    first = cli("export", copy, "--to", "mlflow", "--tracking-uri", uri)
    assert first.exit_code == 0 and "4 exported" in first.stdout, first.stderr
    ids = {r.info.run_id for r in _mlflow_runs(uri)}
    again = cli("export", copy, "--to", "mlflow", "--tracking-uri", uri)
    assert again.exit_code == 0 and "4 unchanged" in again.stdout, again.stderr
    assert {r.info.run_id for r in _mlflow_runs(uri)} == ids and len(ids) == 5  # the study's parent and 4 runs

    meta_path = copy / "kind=none-s0/meta.json"  # the run is found interrupted since: its export is replaced
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "status": "interrupted"}))
    third = cli("export", copy, "--to", "mlflow", "--tracking-uri", uri)
    assert third.exit_code == 0 and "1 updated, 3 unchanged" in third.stdout, third.stderr
    active = [r for r in _mlflow_runs(uri) if r.info.lifecycle_stage == "active"]
    named = [r for r in active if r.info.run_name == "kind=none-s0"]
    assert len(active) == 5 and len(named) == 1 and named[0].info.status == "KILLED"
    assert all(r.info.status != "RUNNING" for r in _mlflow_runs(uri))


def test_a_run_still_training_is_skipped_with_a_warning(study, tmp_path, cli):
    copy = tmp_path / "st"
    shutil.copytree(study, copy)
    meta_path = copy / "kind=none-s0/meta.json"
    meta = json.loads(meta_path.read_text())
    alive = {"status": "running", "pid": os.getpid(), "hostname": socket.gethostname()}  # this process
    meta_path.write_text(json.dumps({**meta, **alive}))
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    result = cli("export", copy, "--to", "mlflow", "--tracking-uri", uri)
    assert result.exit_code == 0 and "3 exported" in result.stdout
    assert "kind=none-s0: still training; not exported" in result.stderr
    assert "kind=none-s0" not in {r.info.run_name for r in _mlflow_runs(uri)}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    ("uri", "says"),
    [
        ("http://127.0.0.1:{port}", "no MLflow server answers there"),
        ("sqlite:///", "name the database file"),
        ("sqlite:///{tmp}/missing/m.db", "no such folder"),
        ("sqlite:///{tmp}/text.db", "is not a SQLite database"),
        ("sqlite:///{tmp}", "is a folder"),
        ("{tmp}/mlruns", "deprecates the file store"),
        ("file://{tmp}/mlruns", "deprecates the file store"),
        ("nosuch://host/x", "unknown scheme 'nosuch'"),
        ("http://127.0.0.1:{http}", "not an MLflow server (HTTP 404"),
        ("sqlite:///{tmp}/fifo.db", "is not a regular file"),
        ("sqlite:////dev/null", "is not a regular file"),
        ("sqlite:////proc/m.db", "cannot create a file in /proc"),
        ("postgresql+nosuchdriver://u@127.0.0.1:1/db", "no postgresql driver is installed"),
    ],
)
def test_an_unusable_tracking_uri_is_one_line_and_creates_nothing(study, tmp_path, cli, uri, says):
    import http.server
    import threading

    (tmp_path / "text.db").write_text("not a database\n")
    os.mkfifo(tmp_path / "fifo.db")
    before = sorted(tmp_path.rglob("*"))

    class Quiet(http.server.SimpleHTTPRequestHandler):  # a web server, not MLflow; its log is not bnbench's output
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    uri = uri.format(tmp=tmp_path, port=_closed_port(), http=server.server_address[1])
    start = time.monotonic()
    try:
        result = cli("export", study, "--to", "mlflow", "--tracking-uri", uri)
    finally:
        server.shutdown()
        server.server_close()
    assert result.exit_code == 2 and says in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "--tracking-uri" in result.stderr
    assert time.monotonic() - start < 30  # seconds, not a client's minutes of retries (a loose bound)
    assert sorted(tmp_path.rglob("*")) == before and (tmp_path / "text.db").read_text() == "not a database\n"


def test_a_killed_export_leaves_a_half_written_run_the_next_export_replaces(study, tmp_path, cli):
    """SIGKILL cannot be caught: the run being written stays RUNNING with a key and no fingerprint. The next
    export deletes it and exports that run whole, once."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'm.db'}"
    assert cli("export", study, "--to", "mlflow", "--tracking-uri", uri).exit_code == 0
    client = MlflowClient(uri)
    (victim,) = [r for r in _mlflow_runs(uri) if r.info.run_name == "kind=none-s0"]
    client.delete_run(victim.info.run_id)  # as if never exported, then a half-written one as a kill leaves it
    half = client.create_run(victim.info.experiment_id, run_name="kind=none-s0",
                             tags={"bnbench.key": victim.data.tags["bnbench.key"]})  # fmt: skip
    again = cli("export", study, "--to", "mlflow", "--tracking-uri", uri)
    assert again.exit_code == 0 and "1 exported, 3 unchanged" in again.stdout, again.stderr
    active = [r for r in _mlflow_runs(uri) if r.info.lifecycle_stage == "active"]
    assert len(active) == 5 and all(r.info.status != "RUNNING" for r in _mlflow_runs(uri))
    assert half.info.run_id not in {r.info.run_id for r in active}


def test_ctrl_c_during_an_mlflow_export_leaves_no_run_running(tmp_path):
    """A real export process stopped by SIGINT, SIGTERM or SIGHUP while it writes: exit 130, one line,
    nothing RUNNING; after Ctrl-C the same command again completes it with one MLflow run per bnbench run."""
    import signal
    import subprocess
    import sys

    config = write_config(tmp_path / "c.yaml", data={"train_subset": 64}, train={"epochs": 200, "batch_size": 64})
    done = subprocess.run([sys.executable, "-m", "bnbench", "run", config, "--seeds", "0-2", "--out-dir",
                           tmp_path / "runs"], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr
    stopped = 0
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        folder = tmp_path / sig.name
        shutil.copytree(tmp_path / "runs", folder / "runs")
        uri = f"sqlite:///{folder / 'm.db'}"
        cmd = [sys.executable, "-m", "bnbench", "export", folder / "runs", "--to", "mlflow", "--tracking-uri", uri]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (folder / "mlartifacts").exists():  # it has begun writing
            time.sleep(0.05)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
        if proc.returncode == 0:  # it finished first (a fast machine): nothing to clean up here
            continue
        stopped += 1
        assert proc.returncode == 130 and "Traceback" not in err, err
        assert err.strip().splitlines()[-1].startswith("error: export stopped"), err
        assert all(r.info.status != "RUNNING" for r in _mlflow_runs(uri))
        if sig != signal.SIGINT:  # the same stop path: completing once again (after Ctrl-C) is enough
            continue
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        active = [r for r in _mlflow_runs(uri) if r.info.lifecycle_stage == "active"]
        assert sorted(r.info.run_name for r in active) == ["c-s0", "c-s1", "c-s2"]
    assert stopped  # at least one signal came while it wrote (each export writes 3 x 200 epochs of metrics)


def test_an_export_that_fails_midway_leaves_no_mlflow_run_running(study, tmp_path, cli, monkeypatch):
    from mlflow.tracking import MlflowClient

    real, calls = MlflowClient.log_artifact, []

    def failing(self, run_id, local_path, *args, **kwargs):
        calls.append(local_path)
        if len(calls) == 4:  # the study file, then two files of the first run, then the store fails
            raise OSError("disk full")
        return real(self, run_id, local_path, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "log_artifact", failing)
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    result = cli("export", study, "--to", "mlflow", "--tracking-uri", uri)
    assert result.exit_code == 1 and "disk full" in result.stderr and "Traceback" not in result.stderr
    runs = _mlflow_runs(uri)
    assert runs and all(r.info.status != "RUNNING" for r in runs)
    assert all(r.info.lifecycle_stage == "deleted" for r in runs if r.info.run_name != "st")
    monkeypatch.setattr(MlflowClient, "log_artifact", real)
    again = cli("export", study, "--to", "mlflow", "--tracking-uri", uri)  # the next export completes it
    assert again.exit_code == 0 and "4 exported" in again.stdout, again.stderr
    assert len([r for r in _mlflow_runs(uri) if r.info.lifecycle_stage == "active"]) == 5


def test_tensorboard_out_that_is_a_file_is_refused_naming_out(study, tmp_path, cli):
    (tmp_path / "tb").write_text("mine\n")
    result = cli("export", study, "--to", "tensorboard", "--out", tmp_path / "tb")
    assert result.exit_code == 2 and result.stderr.startswith("error: --out ") and "not a folder" in result.stderr
    assert (tmp_path / "tb").read_text() == "mine\n"
