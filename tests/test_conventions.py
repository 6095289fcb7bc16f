"""Command-line conventions and input that used to slip through: --version, -h, ls, NaN, duplicate keys."""

from __future__ import annotations

import json

import pytest

from bnbench import __version__

from conftest import read_run, write_config


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
        (["train.eval_bn=batch", "train.eval_batch_size=1"], "train.eval_batch_size: train.eval_bn: batch"),
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
