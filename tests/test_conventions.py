"""Command-line conventions and input that used to slip through: --version, -h, ls, NaN, duplicate keys."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from bnbench import __version__
from bnbench.config import config_from_dict, load_config

from conftest import read_run, write_config, write_mnist


def test_version_and_short_help(cli):
    version = cli("--version")
    assert version.exit_code == 0 and version.stdout.strip() == f"bnbench {__version__}"
    short = cli("-h")
    assert short.exit_code == 0 and "Usage" in short.stdout and "sweep" in short.stdout
    assert cli("run", "-h").exit_code == 0


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_numbers_are_refused(tmp_path, cli, value):
    path = tmp_path / "c.yaml"
    path.write_text(f"norm: {{momentum: {value}}}\n")
    result = cli("run", path, "--out-dir", tmp_path / "runs")
    assert result.exit_code == 2 and "norm.momentum: expected a finite number" in result.stderr
    assert not (tmp_path / "runs").exists()
    lr = cli("run", write_config(tmp_path / "ok.yaml"), "--set", f"train.lr={value}", "--out-dir", tmp_path / "runs")
    assert lr.exit_code == 2 and "train.lr: expected a finite number" in lr.stderr


def test_a_key_given_twice_is_refused(tmp_path, cli):
    path = tmp_path / "dup.yaml"
    path.write_text("train: {lr: 0.1}\nmodel: {name: mlp}\ntrain: {epochs: 1}\n")
    result = cli("run", path, "--out-dir", tmp_path / "runs")
    assert result.exit_code == 2
    assert result.stderr == f"error: {path}: malformed YAML at line 3, column 1: duplicate key 'train'\n"


@pytest.mark.parametrize("name", ["exp #3", "2024", "true"])
def test_shortcut_options_take_their_value_as_a_string(tmp_path, cli, name):
    config = write_config(tmp_path / "c.yaml", train={"epochs": 1})
    result = cli("run", config, "--name", name, "--out-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    assert read_run(tmp_path / "runs" / name)[0]["name"] == name


def test_ls_lists_runs_and_studies(tmp_path, cli):
    config = write_config(tmp_path / "c.yaml", train={"epochs": 1})
    out = tmp_path / "runs"
    assert cli("run", config, "--seeds", "0,1", "--out-dir", out).exit_code == 0
    assert (
        cli("sweep", config, "--grid", "train.lr=0.1", "--name", "st", "--out-dir", out, "--jobs", "1").exit_code == 0
    )
    rows = json.loads(cli("ls", out, "--format", "json").stdout)
    assert [r["run"] for r in rows] == ["c-s0", "c-s1", "st/lr=0.1-s0"]
    assert all(r["status"] == "completed" and r["epochs_completed"] == 1 for r in rows)
    assert 0 <= rows[0]["final_test_acc"] <= 1
    table = cli("ls", out)
    assert table.exit_code == 0 and "3 runs in" in table.stdout and "st/lr=0.1-s0" in table.stdout
    assert cli("ls", tmp_path / "nowhere").exit_code == 2


def test_bench_out_in_a_missing_folder_is_refused_before_any_work(tmp_path, cli):
    result = cli("bench", "--out", tmp_path / "missing" / "bench.json", "--models", "mlp")
    assert result.exit_code == 2 and "--out" in result.stderr and "no such folder" in result.stderr


def test_a_config_path_that_is_not_a_file_says_what_it_is(tmp_path, cli):
    import os

    (tmp_path / "folder").mkdir()
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for name, what in (("folder", "a directory"), ("pipe", "a FIFO"), ("loop", "a symbolic link"),
                       ("missing.yaml", "no such config file")):  # fmt: skip
        result = cli("run", tmp_path / name, "--out-dir", tmp_path / "runs")
        assert result.exit_code == 2 and f"{tmp_path / name}: {what}" in result.stderr, result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.batch_size=1"], "train.batch_size: scratch normalizes with batch statistics"),
        (["train.batch_size=4", "train.accumulate=4"], "at least 2 examples per micro-batch; got 1"),
        (["train.eval_bn=batch", "train.eval_batch_size=1"], "train.eval_batch_size: scratch with train.eval_bn batch"),
        (["model.hidden=[1000000000000]"], "model.hidden[0]: must be <= 100000"),
    ],
)
def test_sizes_that_cannot_train_are_refused_before_any_work(tmp_path, cli, overrides, message):
    config = write_config(tmp_path / "c.yaml")
    args = [a for o in overrides for a in ("--set", o)]
    result = cli("run", config, *args, "--out-dir", tmp_path / "runs")
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert not (tmp_path / "runs").exists()
    none = cli("run", config, "--set", "norm.kind=none", "--set", "train.batch_size=1", "--set", "train.epochs=1",
               "--set", "data.train_subset=8", "--out-dir", tmp_path / "plain")  # fmt: skip
    assert none.exit_code == 0  # without batch statistics a batch of one is fine


def test_shipped_configs_run_by_name_from_an_empty_folder(tmp_path, cli, monkeypatch):
    data = write_mnist(tmp_path / "data", folder="FashionMNIST")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    result = cli("run", "lenet_bn", "--epochs", "1", "--set", "train.batch_size=64", "--data-dir", data)
    assert result.exit_code == 0, result.output
    assert json.loads((empty / "runs/lenet_bn/meta.json").read_text())["status"] == "completed"
    result = cli("run", "lenet_nothing")
    assert result.exit_code == 2 and "no such config file or shipped config (`bnbench config list`" in result.stderr


def test_config_show_prints_every_default_and_the_overrides(tmp_path, cli):
    result = cli("config", "show", "lenet_bn", "--set", "train.lr=0.5")
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.stdout)
    assert shown["train"]["lr"] == 0.5 and shown["norm"]["momentum"] == 0.1 and shown["name"] == "lenet_bn"
    full = load_config(None, base=config_from_dict(shown, "shown")).to_dict()
    assert "hidden" not in shown["model"]  # LeNet has no hidden widths: config show leaves the key out
    full["model"].pop("hidden")
    assert full == shown
    listed = cli("config", "list")
    assert listed.exit_code == 0 and "lenet_bn" in listed.stdout and "mlp_none" in listed.stdout
    bad = cli("config", "show", "lenet_bn", "--set", "train.lr=-1")
    assert bad.exit_code == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_the_wheel_ships_configs_and_studies(tmp_path):
    repo = Path(__file__).resolve().parent.parent
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(repo),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if build.returncode != 0 and "No module named" in build.stderr:
        pytest.skip(f"cannot build a wheel here: {build.stderr.strip().splitlines()[-1]}")
    assert build.returncode == 0, build.stderr
    (wheel,) = tmp_path.glob("bnbench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {
        "bnbench/configs/lenet_bn.yaml",
        "bnbench/configs/studies/lenet_norms.yaml",
        "bnbench/configs/smoke.yaml",
        "bnbench/api.py",
        "bnbench/examples/bnbench_tour.py",
        "bnbench/examples/my_norms.py",
    } <= names
    # Installed into a fresh virtual environment (no editable install, no repository on the path; torch and
    # the other dependencies seen through a .pth file), it trains a shipped config and loads it from Python.
    import os
    import site

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, capture_output=True, timeout=300)
    (packages,) = venv.glob("lib/python*/site-packages")
    (packages / "shared.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    work = tmp_path / "work"
    work.mkdir()

    def inside(*args: object) -> subprocess.CompletedProcess:
        return subprocess.run([str(a) for a in args], cwd=work, env=env, capture_output=True, text=True, timeout=600)

    installed = inside(venv / "bin/python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel)
    assert installed.returncode == 0, installed.stderr
    listed = inside(venv / "bin/bnbench", "config", "list")
    assert listed.returncode == 0 and "smoke" in listed.stdout and "mlp_lr" in listed.stdout, listed.stderr
    trained = inside(venv / "bin/bnbench", "run", "smoke", "--epochs", "1")
    assert trained.returncode == 0, trained.stderr
    code = "import bnbench; print(bnbench.__file__); print(len(bnbench.load('runs')))"
    loaded = inside(venv / "bin/python", "-c", code)
    assert loaded.returncode == 0, loaded.stderr
    where, count = loaded.stdout.split()
    assert Path(where).is_relative_to(venv) and count == "1"


def test_tables_drop_columns_on_a_narrow_terminal_and_never_split_a_number():
    from rich.console import Console

    from bnbench.evidence.tables import fitted

    header = ["run", "status", "final acc", "examples to 0.97", "wall s"]
    rows = [["kind=torch,lr=0.1-s0", "completed", "0.9812", "1,234,567 (9,999)", "12.5"]]
    narrow = Console(width=50, record=True)
    narrow.print(fitted("runs", header, rows, 50))
    text = narrow.export_text()
    assert "0.9812" in text and "1,234,567" not in text and "columns hidden" in text and "--wide" in text
    assert all(len(line) <= 50 for line in text.splitlines())
    wide = Console(width=200, record=True)
    wide.print(fitted("runs", header, rows, 50, wide=True))
    assert "1,234,567 (9,999)" in wide.export_text() and "hidden" not in wide.export_text()


def test_piped_tables_are_as_wide_as_they_need(tmp_path, cli):
    long = "a_rather_long_run_name_" * 6
    config = write_config(tmp_path / "c.yaml", train={"epochs": 1}, name=long)
    assert cli("run", config, "--out-dir", tmp_path / "runs").exit_code == 0
    result = cli("compare", tmp_path / "runs")
    assert result.exit_code == 0 and any(long in line and len(line) > 160 for line in result.stdout.splitlines())


def test_momentum_from_another_frameworks_convention_is_one_warning_and_the_run_is_unchanged(tmp_path, cli):
    """norm.momentum 0 (running statistics frozen at 0/1) and > 0.5 (Keras' 0.9/0.99 copied over): one warning
    line naming PyTorch's convention each; the runs train exactly as configured (training never reads the
    running statistics, so the training curves equal the default momentum's)."""
    config = write_config(tmp_path / "c.yaml", norm={"kind": "torch"}, train={"epochs": 1})
    out = tmp_path / "runs"
    results = {}
    for name, momentum in (("default", 0.1), ("zero", 0), ("keras", 0.99)):
        results[name] = cli("run", config, "--set", f"norm.momentum={momentum}", "--name", name, "--out-dir", out)
        assert results[name].exit_code == 0, results[name].output
    assert "warning" not in results["default"].stderr
    for name, says in (("zero", "norm.momentum 0: the running statistics stay at their initial 0 and 1"),
                       ("keras", "norm.momentum 0.99: the running statistics follow the last batch")):  # fmt: skip
        warnings = [line for line in results[name].stderr.splitlines() if line.startswith("warning:")]
        assert len(warnings) == 1 and says in warnings[0] and "PyTorch's convention" in warnings[0], warnings
        meta, metrics, _ = read_run(out / name)
        assert meta["status"] == "completed"
        assert (
            yaml.safe_load((out / name / "config.yaml").read_text())["norm"]["momentum"] == float(name != "zero") * 0.99
        )
        assert metrics["train_loss"].tolist() == read_run(out / "default")[1]["train_loss"].tolist()
    assert read_run(out / "zero")[1]["test_loss"].iloc[-1] != read_run(out / "default")[1]["test_loss"].iloc[-1]
    grid = cli("sweep", config, "--grid", "norm.momentum=0.9,0.99,0.1", "--out-dir", out, "--dry-run")
    assert grid.exit_code == 0 and grid.stderr.count("warning:") == 1 and "norm.momentum 0.9, 0.99:" in grid.stderr


def test_every_config_key_is_documented_in_docs_config_md():
    from bnbench.config import dotted_keys

    text = (Path(__file__).resolve().parents[1] / "docs" / "config.md").read_text()
    assert not [key for key in dotted_keys() if key != "name" and f"`{key}`" not in text]
