"""Export to TensorBoard and MLflow, read back with each library's own reader and compared with the CSVs."""

from __future__ import annotations

import importlib.util
import math
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
