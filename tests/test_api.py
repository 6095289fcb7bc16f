"""bnbench from Python: the public surface, tidy frames, and the same tables and errors as the CLI."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

import bnbench
from bnbench.evidence.report import figure, p_text

from conftest import write_config

STUDY = {
    "name": "tour",
    "question": "Does BN help a small MLP on synthetic data?",
    "base": "base.yaml",
    "matrix": {"norm.kind": ["none", "torch"]},
    "seeds": "0-2",
    "claims": [
        {"id": "bn_lower_loss", "says": "BN ends with a lower training loss", "compare": {"norm.kind": "torch"},
         "against": {"norm.kind": "none"}, "metric": {"column": "train_loss", "at": "final"}, "expect": "less",
         "margin": 0.01},
        {"id": "same_accuracy", "says": "BN ends within 0.5 of no norm", "compare": {"norm.kind": "torch"},
         "against": {"norm.kind": "none"}, "metric": {"column": "test_acc", "at": "final"}, "expect": "equivalent",
         "margin": 0.5},
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A tiny study swept from Python: 2 cells x 3 seeds, 2 epochs on synthetic data."""
    root = tmp_path_factory.mktemp("api")
    write_config(root / "base.yaml", name="mlp", data={"train_subset": 256})
    (root / "tour.yaml").write_text(yaml.safe_dump(STUDY, sort_keys=False))
    runs = bnbench.sweep(root / "tour.yaml", out_dir=root / "runs", jobs=1)
    assert len(runs) == 6 and {r.status for r in runs} == {"completed"}
    return root / "runs" / "tour"


def test_the_public_surface_is_pinned_and_import_stays_light():
    assert bnbench.__all__ == ["InputError", "Runs", "compare", "judge", "load", "run", "sweep"]
    assert issubclass(bnbench.InputError, ValueError)
    code = ("import sys, bnbench; assert 'torch' not in sys.modules and 'pandas' not in sys.modules; "
            "from bnbench.cli.app import main; main(['--version'])")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip() == f"bnbench {bnbench.__version__}", result.stderr
    with pytest.raises(AttributeError):
        bnbench.not_there  # noqa: B018


def test_tidy_frames_have_one_row_per_run_and_epoch_step_and_probe(study):
    runs = bnbench.load(study)
    epochs = runs.epochs()
    assert len(epochs) == 6 * 2 and list(epochs.columns[:5]) == ["name", "status", "seed", "path", "epoch"]
    assert {"norm.kind", "train.lr", "model.hidden", "config.name"} <= set(epochs.columns)
    means = epochs.groupby(["norm.kind", "epoch"])["test_acc"].mean()
    assert means.index.tolist() == [("none", 1), ("none", 2), ("torch", 1), ("torch", 2)]
    assert sorted(epochs.loc[epochs["epoch"] == 2, "seed"]) == [0, 0, 1, 1, 2, 2]
    steps = runs.steps()
    assert len(steps) == sum(len(r.steps) for r in runs) > 12 and "step" in steps and "norm.kind" in steps
    assert runs.diagnostics().empty  # no run recorded diagnostics
    first = runs[0]
    mine = epochs[epochs["name"] == first.name]
    assert mine["train_loss"].tolist() == pd.read_csv(first.path / "metrics.csv")["train_loss"].tolist()


def test_summary_is_what_ls_shows(study, cli):
    listed = {row["path"]: row for row in json.loads(cli("ls", study, "--format", "json").stdout)}
    summary = bnbench.load(study).summary()
    assert len(summary) == len(listed) == 6
    for row in summary.to_dict("records"):
        ls = listed[row["path"]]
        assert (row["status"], row["epochs_completed"], row["final_test_acc"]) == (
            ls["status"], ls["epochs_completed"], ls["final_test_acc"])  # fmt: skip


def test_compare_equals_the_cli_groups_table(study, cli):
    printed = cli("compare", study, "--format", "csv", "--table", "groups", "--baseline", "kind=none")
    assert printed.exit_code == 0, printed.output
    frame = bnbench.compare(bnbench.load(study), baseline="kind=none")
    assert frame.to_csv(index=False) == printed.stdout
    assert frame.loc[frame["group"] == "kind=torch", "test"].item() == "paired t" and frame.attrs["test"]
    assert bnbench.compare(study).to_csv(index=False) == cli("compare", study, "--format", "csv", "--table",
                                                             "groups").stdout  # fmt: skip
    with pytest.raises(bnbench.InputError) as bad:
        bnbench.compare(study, baseline="kind=nothing")
    said = cli("compare", study, "--baseline", "kind=nothing")
    assert said.exit_code == 2 and said.stderr == f"error: {bad.value}\n"


def test_judge_equals_the_reports_verdicts(study, cli, tmp_path):
    made = cli("report", study, "--out", tmp_path / "report")
    assert made.exit_code == 0, made.output
    text = (tmp_path / "report" / "README.md").read_text()
    table = text.split("## Verdicts")[1].split("\n## ")[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines() if line.startswith("| [")]
    verdicts = bnbench.judge(study)
    assert len(rows) == len(verdicts) == 2
    for row, (_, j) in zip(rows, verdicts.iterrows(), strict=True):
        effect = f"{figure(j.effect)} [{figure(j.ci_low)}, {figure(j.ci_high)}]" + (
            " (90%)" if j.ci_level == 0.9 else "")  # fmt: skip
        assert row[1] == f"{j.claim}: {j.says}" and row[2] == j.verdict
        assert row[3] == effect and row[4] == p_text(j.holm_p) and row[5] == (j.deviations or "none")
    assert verdicts.columns.tolist()[:4] == ["study", "claim", "says", "verdict"] and (verdicts["n"] == 3).all()
    with pytest.raises(bnbench.InputError, match=re.escape(f"{study.parent}: not a study folder")):
        bnbench.judge(study.parent)


def test_load_warns_as_the_cli_does_and_bad_input_is_one_value_error(study, tmp_path, cli):
    damaged = tmp_path / "runs" / "broken"
    damaged.mkdir(parents=True)
    (damaged / "config.yaml").write_text("model: {}\n")
    (damaged / "meta.json").write_text("{not json")
    (tmp_path / "runs" / "ok").symlink_to(study / "kind=none-s0")
    with pytest.warns(UserWarning) as caught:
        runs = bnbench.load(tmp_path / "runs", study / "kind=torch-s0")
    said = cli("compare", tmp_path / "runs", study / "kind=torch-s0")
    assert [f"warning: {w.message}" for w in caught] == [line for line in said.stderr.splitlines()
                                                         if line.startswith("warning:")]  # fmt: skip
    assert len(caught) == 1 and "broken" in str(caught[0].message) and len(runs) == 1
    with pytest.raises(ValueError) as nothing:
        bnbench.load(tmp_path / "empty")
    assert type(nothing.value) is bnbench.InputError
    assert cli("compare", tmp_path / "empty").stderr.endswith(f"error: {nothing.value}\n")


def test_run_trains_resumes_by_call_and_refuses_bad_input_like_the_cli(tmp_path, cli):
    config = write_config(tmp_path / "c.yaml", name="c", train={"epochs": 1, "diagnostics": True})
    out = tmp_path / "runs"
    runs = bnbench.run(config, seeds=[0, 1], overrides={"train.lr": 0.05}, out_dir=out)
    assert [r.name for r in runs] == ["c-s0", "c-s1"] and {r.status for r in runs} == {"completed"}
    assert runs.epochs()["train.lr"].tolist() == [0.05, 0.05] and not runs.diagnostics().empty
    again = bnbench.run(config, seeds=[0, 1], overrides={"train.lr": 0.05}, out_dir=out)
    assert [r.name for r in again] == ["c-s0-2", "c-s1-2"]  # a finished command typed again: new runs
    with pytest.raises(bnbench.InputError) as bad:
        bnbench.run(config, overrides={"train.lr": -1}, out_dir=tmp_path / "bad")
    said = cli("run", config, "--set", "train.lr=-1", "--out-dir", tmp_path / "bad")
    assert said.exit_code == 2 and said.stderr == f"error: {bad.value}\n"
    assert not (tmp_path / "bad").exists()
    with pytest.raises(bnbench.InputError, match="no such study file"):
        bnbench.sweep(tmp_path / "nothing.yaml", out_dir=tmp_path / "bad")


TOUR = Path(bnbench.__file__).resolve().parent / "examples" / "bnbench_tour.py"


def test_the_tour_notebook_runs_headless(tmp_path):
    """bnbench/examples/bnbench_tour.py (a Jupytext percent script) as a notebook: every cell executed in a
    Jupyter kernel by nbclient (the `notebook` extra); any cell that raises fails the test."""
    jupytext = pytest.importorskip("jupytext")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    notebook = jupytext.read(TOUR)
    assert sum(cell.cell_type == "code" for cell in notebook.cells) >= 5
    os.environ["BNBENCH_TOUR_DIR"] = str(tmp_path / "tour")  # the kernel inherits it
    try:
        nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                resources={"metadata": {"path": str(tmp_path)}}).execute()  # fmt: skip
    finally:
        del os.environ["BNBENCH_TOUR_DIR"]
    text = "\n".join(out.get("text", "") + str(out.get("data", {}).get("text/plain", ""))
                     for cell in notebook.cells for out in cell.get("outputs", []))  # fmt: skip
    assert "bn_lower_loss" in text and "tour: 6 runs" in text
    assert any("image/png" in out.get("data", {}) for cell in notebook.cells for out in cell.get("outputs", []))
    assert (tmp_path / "tour" / "curves.png").stat().st_size > 10_000
    assert len(bnbench.load(tmp_path / "tour" / "runs")) == 6


def test_a_stop_in_run_raises_keyboard_interrupt_and_the_loop_stops(tmp_path):
    """Ctrl-C (SIGINT to the process) during `bnbench.run` in a loop of calls: the run is marked
    interrupted, KeyboardInterrupt reaches the caller, the next call never starts; the same call resumes."""
    config = write_config(tmp_path / "slow.yaml", data={"train_subset": 2048}, train={"epochs": 30, "batch_size": 8})
    script = tmp_path / "loop.py"
    script.write_text(
        "import bnbench\n"
        "for lr in (0.1, 0.05):\n"
        f"    bnbench.run({str(config)!r}, overrides={{'train.lr': lr}}, out_dir='runs')\n"
        "    print('CALL DONE', lr, flush=True)\n"
    )
    proc = subprocess.Popen([sys.executable, script], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    for line in proc.stdout:  # the first epoch's line: the run is training
        if "epoch 1/30" in line or line.startswith("slow"):
            break
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err and "CALL DONE" not in out
    (meta,) = (tmp_path / "runs").glob("*/meta.json")
    assert json.loads(meta.read_text())["status"] == "interrupted"


def test_wrong_types_are_input_errors_not_type_errors(tmp_path, study):
    for call in (lambda: bnbench.load(5), lambda: bnbench.run(None, out_dir=tmp_path / "x"),
                 lambda: bnbench.compare(study, target="abc"),
                 lambda: bnbench.sweep(study, grid={"train.lr": 0.1}, out_dir=tmp_path / "x")):  # fmt: skip
        with pytest.raises(bnbench.InputError):
            call()
    assert not (tmp_path / "x").exists()
