"""Your own norm or model, with no edit to bnbench: an import path in the config (a file in the current
folder here, bnbench/examples/my_norms.py), or a name an installed package registers as an entry point."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_config

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "bnbench/examples/my_norms.py"


def bnbench(cwd: Path, *args: object, env: dict | None = None) -> subprocess.CompletedProcess:
    """The installed `bnbench` script, as a person runs it (its import path does not hold the folder)."""
    script = Path(sys.executable).parent / "bnbench"
    return subprocess.run([str(script), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})  # fmt: skip


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    shutil.copy(EXAMPLE, tmp_path / "my_norms.py")
    write_config(tmp_path / "mine.yaml", norm={"kind": "my_norms:MyBatchNorm"}, model={"name": "my_norms:tiny_mlp",
                 "hidden": [16]})  # fmt: skip
    return tmp_path


def _statuses(folder: Path) -> list[str]:
    return [json.loads(p.read_text())["status"] for p in sorted(folder.glob("**/meta.json"))]


def test_a_norm_and_model_from_a_file_train_and_sweep(folder):
    result = bnbench(folder, "run", "mine.yaml", "--out-dir", "runs")
    assert result.returncode == 0, result.stderr
    assert _statuses(folder / "runs") == ["completed"]
    result = bnbench(folder, "sweep", "mine.yaml", "--grid", "train.lr=0.05,0.1", "--jobs", "2", "--out-dir", "sw")
    assert result.returncode == 0, result.stderr
    assert _statuses(folder / "sw") == ["completed"] * 2
    result = bnbench(folder, "compare", "sw/mine")
    assert result.returncode == 0 and "lr=0.05" in result.stdout


def test_a_plugin_norm_equals_the_shipped_batch_norm_run_for_run(folder):
    """The example is BatchNorm written out: a run with it gives nn.BatchNorm's numbers (CPU, float32)."""
    import pandas as pd

    base = {"model": {"name": "mlp", "hidden": [16]}, "train": {"epochs": 2}}
    write_config(folder / "a.yaml", norm={"kind": "my_norms:MyBatchNorm"}, **base)
    write_config(folder / "b.yaml", norm={"kind": "torch"}, **base)
    for name in ("a", "b"):
        assert bnbench(folder, "run", f"{name}.yaml", "--out-dir", "runs").returncode == 0
    a, b = (pd.read_csv(folder / f"runs/{n}/metrics.csv") for n in ("a", "b"))
    assert (a["test_acc"] - b["test_acc"]).abs().max() <= 0.01
    assert (a["train_loss"] - b["train_loss"]).abs().max() < 1e-3


def test_a_plugin_norm_on_local_ray(folder):
    pytest.importorskip("ray")
    result = bnbench(folder, "sweep", "mine.yaml", "--seeds", "0,1", "--backend", "ray", "--out-dir", "ray")
    assert result.returncode == 0, result.stderr
    assert _statuses(folder / "ray") == ["completed"] * 2


def test_check_holds_a_plugin_norm_to_its_reference_and_finds_a_wrong_one(folder):
    result = bnbench(folder, "check", "--norm", "my_norms:MyBatchNorm", "--reference", "torch")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "my_norms:MyBatchNorm (autograd)" in result.stdout and "45 passed, 0 failed" in result.stdout
    result = bnbench(folder, "check", "--norm", "my_norms:MyBatchNorm")  # the contract and torch's families alone
    assert result.returncode == 0 and "11 passed, 0 failed" in result.stdout
    wrong = (folder / "my_norms.py").read_text().replace("x.var(dims, unbiased=False)", "x.var(dims, unbiased=True)")
    (folder / "wrong_norms.py").write_text(wrong)
    result = bnbench(folder, "check", "--norm", "wrong_norms:MyBatchNorm", "--reference", "torch")
    assert result.returncode == 1 and "FAIL" in result.stdout


def test_check_names_the_one_family_a_norm_returning_zeros_for_one_value_per_channel_fails(folder):
    """nn.BatchNorm raises ValueError on one value per channel in training; a copy of the example without
    that check returns the bias (zeros) instead, and fails the error-cases row, and only it."""
    zeros = (folder / "my_norms.py").read_text().replace("x.numel() == x.shape[1]", "False")
    assert zeros != (folder / "my_norms.py").read_text()
    (folder / "zero_norms.py").write_text(zeros)
    result = bnbench(folder, "check", "--norm", "zero_norms:MyBatchNorm", "--reference", "torch")
    assert result.returncode == 1 and "44 passed, 1 failed" in result.stdout, result.stdout + result.stderr
    failing = [line for line in result.stdout.splitlines() if "FAIL" in line]
    assert len(failing) == 1 and "torch's tests, input checks: FAIL (one value per channel" in failing[0], failing


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("nowhere:Norm", "cannot import nowhere"),
        ("my_norms:Missing", "my_norms has no attribute 'Missing'"),
        ("my_norms:EPS", "is not callable"),
        ("my_norms:one_argument", "cannot be called with (features_shape, cfg)"),
        ("unregistered", "is not one of none, scratch"),
    ],
)
def test_a_bad_plugin_is_one_line_before_any_work(folder, kind, message):
    (folder / "my_norms.py").write_text(
        (folder / "my_norms.py").read_text() + "\nEPS = 1e-5\n\n\ndef one_argument(x):\n    return x\n"
    )
    write_config(folder / "bad.yaml", norm={"kind": kind})
    result = bnbench(folder, "run", "bad.yaml", "--out-dir", "runs")
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (folder / "runs").exists()


def test_a_plugin_batch_norm_refuses_batches_of_one(folder):
    write_config(folder / "one.yaml", norm={"kind": "my_norms:MyBatchNorm"}, train={"batch_size": 1})
    result = bnbench(folder, "run", "one.yaml", "--out-dir", "runs")
    assert result.returncode == 2 and "batch statistics" in result.stderr


def test_an_installed_package_registers_a_norm_by_name(folder, tmp_path):
    site = tmp_path / "site"
    (site / "my_plugin-1.0.dist-info").mkdir(parents=True)
    (site / "my_plugin-1.0.dist-info/METADATA").write_text("Metadata-Version: 2.1\nName: my-plugin\nVersion: 1.0\n")
    (site / "my_plugin-1.0.dist-info/entry_points.txt").write_text("[bnbench.norms]\nmybn = my_norms:MyBatchNorm\n")
    shutil.copy(EXAMPLE, site / "my_norms.py")
    write_config(folder / "named.yaml", norm={"kind": "mybn"})
    result = bnbench(folder, "run", "named.yaml", "--out-dir", "runs", env={"PYTHONPATH": str(site)})
    assert result.returncode == 0, result.stderr
    assert _statuses(folder / "runs") == ["completed"]


def test_a_plugin_norm_in_bench_and_with_diagnostics(folder):
    result = bnbench(folder, "bench", "--models", "mlp", "--norms", "torch,my_norms:MyBatchNorm", "--rounds", "1",
                     "--no-reference", "--device", "cpu")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "my_norms:MyBatchNorm" in result.stdout and "x torch" in result.stdout
    write_config(folder / "diag.yaml", norm={"kind": "my_norms:MyBatchNorm"}, train={"diagnostics": True})
    assert bnbench(folder, "run", "diag.yaml", "--out-dir", "runs").returncode == 0
    assert (folder / "runs/diag/diagnostics.csv").read_text().count("\n") > 10
    result = bnbench(folder, "plot", "runs/diag", "--diagnostics", "--out", "inside.png")
    assert result.returncode == 0, result.stderr


EVIL = """
import sys
import torch.nn as nn


class ExitNorm(nn.Module):
    def __init__(self, shape, cfg):
        super().__init__()

    def forward(self, x):
        sys.exit(7)


class RaiseNorm(nn.Module):
    def __init__(self, shape, cfg):
        raise RuntimeError("boom")


def not_a_module(shape, cfg):
    return 42


def model_not_a_module(block, cfg):
    return "nope"
"""


@pytest.mark.parametrize(
    "key, spec, message",
    [
        ("norm", "evil:RaiseNorm", "norm.kind evil:RaiseNorm: the plugin norm failed when built (RuntimeError: boom)"),
        ("norm", "evil:not_a_module", "norm.kind evil:not_a_module: the plugin norm returned a int, not a torch"),
        ("model", "evil:model_not_a_module", "model.name evil:model_not_a_module: the plugin model returned a str"),
    ],
)
def test_a_plugin_that_raises_or_returns_no_module_is_one_line_exit_2(folder, key, spec, message):
    (folder / "evil.py").write_text(EVIL)
    write_config(folder / "bad.yaml", **({"norm": {"kind": spec}} if key == "norm" else {"model": {"name": spec}}))
    for command in (["run"], ["sweep", "--seeds", "0,1"]):
        result = bnbench(folder, *command, "bad.yaml", "--out-dir", "runs")
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1 and not (folder / "runs").exists()


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_a_plugin_that_exits_in_forward_fails_its_run_with_one_line(folder, command):
    (folder / "evil.py").write_text(EVIL)
    write_config(folder / "bad.yaml", norm={"kind": "evil:ExitNorm"})
    seeds = ["--seeds", "0", "--jobs", "1"] if command == "sweep" else []
    result = bnbench(folder, command, "bad.yaml", *seeds, "--out-dir", "runs")
    assert result.returncode == 1, result.stderr
    assert "evil:ExitNorm called sys.exit(7)" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert _statuses(folder / "runs") == ["failed"]


def test_a_malformed_entry_point_of_another_package_is_no_traceback(folder, tmp_path):
    site = tmp_path / "site"
    (site / "bad-1.0.dist-info").mkdir(parents=True)
    (site / "bad-1.0.dist-info/METADATA").write_text("Metadata-Version: 2.1\nName: bad\nVersion: 1.0\n")
    (site / "bad-1.0.dist-info/entry_points.txt").write_text("[bnbench.norms]\nweird = not a path!\n")
    env = {"PYTHONPATH": str(site)}
    result = bnbench(folder, "run", "mine.yaml", "--out-dir", "runs", env=env)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    write_config(folder / "weird.yaml", norm={"kind": "weird"})
    result = bnbench(folder, "run", "weird.yaml", "--out-dir", "runs2", env=env)
    assert result.returncode == 2 and "weird: cannot import not a path!" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
