"""Diagnostics: the statistics themselves, the probe batch, the cost of off, exact restore and resume."""

from __future__ import annotations

from contextlib import contextmanager

import pandas as pd
import pytest
import torch

import bnbench.runs.execute as runs_module
from bnbench.config import load_config
from bnbench.training.data import load_data
from bnbench.training.diagnostics import channel_stats, percentiles, probe_indices, unit_of
from bnbench.training.train import Trainer

from conftest import read_run, write_config

TIMING = ["epoch_seconds", "examples_per_second"]


def test_percentiles_unit_and_channel_statistics_on_known_tensors():
    assert percentiles(torch.arange(101.0)).tolist() == pytest.approx([15.0, 50.0, 85.0])
    x = torch.arange(2 * 3 * 5 * 5.0).view(2, 3, 5, 5)
    assert unit_of(x).tolist() == [12.0, 87.0]  # channel 0, centre pixel (2, 2), of both examples
    assert unit_of(torch.eye(3)).tolist() == [1.0, 0.0, 0.0]
    mean, var = channel_stats(torch.tensor([[1.0, 10.0], [3.0, 10.0]]))
    assert mean.tolist() == [2.0, 10.0] and var.tolist() == [2.0, 0.0]


def test_probe_batch_is_fixed_by_the_seed():
    assert torch.equal(probe_indices(1000, 64, seed=3), probe_indices(1000, 64, seed=3))
    assert not torch.equal(probe_indices(1000, 64, seed=3), probe_indices(1000, 64, seed=4))
    assert len(probe_indices(10, 64, seed=0)) == 10


def _trainer(**train) -> Trainer:
    overrides = ["data.dataset=synthetic", "model.name=mlp", "train.batch_size=64", "norm.kind=torch"]
    cfg = load_config(None, overrides + [f"train.{k}={v}" for k, v in train.items()])
    return Trainer.create(cfg, load_data(cfg.data, None, torch.device("cpu")), torch.device("cpu"))


def test_off_registers_nothing_and_writes_no_file(tmp_path, cli):
    trainer = _trainer(diagnostics="false")
    assert trainer.diagnostics is None
    trainer.train_epoch(1, max_steps=3)
    assert not any(m._forward_hooks or m._backward_hooks for m in trainer.model.modules())
    config = write_config(tmp_path / "c.yaml", train={"epochs": 1})
    assert cli("run", config, "--out-dir", tmp_path / "runs").exit_code == 0
    assert not (tmp_path / "runs/c/diagnostics.csv").exists()


def test_a_probe_puts_back_weights_gradients_buffers_and_removes_its_hooks():
    trainer = _trainer(diagnostics="true")
    trainer.train_epoch(1, max_steps=2)
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    grads = [p.grad.clone() for p in trainer.model.parameters()]
    optimizer = str(trainer.optimizer.state_dict())
    rows = trainer.diagnostics.record(step=2, epoch=1, lr=1.0)  # landscape too: step 2 ends no epoch, so force
    rows += trainer.diagnostics.record(step=trainer.steps_per_epoch, epoch=1, lr=1.0)
    assert {r["quantity"] for r in rows} >= {"beta_smoothness", "grad_change_max", "unit_p50", "lag_mean"}
    for key, value in trainer.model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert all(torch.equal(p.grad, g) for p, g in zip(trainer.model.parameters(), grads, strict=True))
    assert str(trainer.optimizer.state_dict()) == optimizer
    assert not any(m._forward_hooks for m in trainer.model.modules())


def test_metrics_are_identical_with_and_without_diagnostics(tmp_path, cli):
    out = tmp_path / "runs"
    for name, on in (("off", False), ("on", True)):
        config = write_config(
            tmp_path / f"{name}.yaml",
            model={"name": "lenet"},
            norm={"kind": "torch", "noise": 0.5},
            train={"diagnostics": on},
        )  # fmt: skip (noise: a probe must not draw it either)
        assert cli("run", config, "--out-dir", out).exit_code == 0
    off, on = read_run(out / "off"), read_run(out / "on")
    pd.testing.assert_frame_equal(off[1].drop(columns=TIMING), on[1].drop(columns=TIMING))
    pd.testing.assert_frame_equal(off[2], on[2])
    diag = pd.read_csv(out / "on/diagnostics.csv")
    assert set(diag["layer"]) == {"model", "norm1", "norm2", "norm3", "norm4"}
    assert diag["step"].iloc[0] == 0 and diag["epoch"].is_monotonic_increasing


def test_layers_and_quantities_line_up_across_norms(tmp_path, cli):
    out = tmp_path / "runs"
    for kind in ("none", "torch"):
        config = write_config(tmp_path / f"{kind}.yaml", norm={"kind": kind}, train={"epochs": 1, "diagnostics": True})
        assert cli("run", config, "--out-dir", out).exit_code == 0
    none, bn = (pd.read_csv(out / f"{k}/diagnostics.csv") for k in ("none", "torch"))
    assert set(none["layer"]) == set(bn["layer"]) == {"model", "norm1"}
    assert set(none["quantity"]) < set(bn["quantity"])  # BN adds gamma, beta and its running statistics
    assert list(none["step"].unique()) == list(bn["step"].unique())


def test_resume_leaves_diagnostics_identical_to_an_uninterrupted_run(tmp_path, cli, monkeypatch):
    config = write_config(tmp_path / "c.yaml", norm={"kind": "torch", "noise": 0.5},  # the noise draws resume too
                          train={"epochs": 3, "diagnostics": True})  # fmt: skip
    out = tmp_path / "runs"
    assert cli("run", config, "--out-dir", out, "--name", "straight").exit_code == 0

    class StopInEpochTwo:
        calls = 0

        def __call__(self) -> bool:
            self.calls += 1
            return self.calls > 8 + 3  # 8 steps per epoch: a stop during epoch 2

    @contextmanager
    def stop_soon():
        yield StopInEpochTwo()

    with monkeypatch.context() as patch:
        patch.setattr(runs_module, "stop_on_signals", stop_soon)
        assert cli("run", config, "--out-dir", out, "--name", "cut").exit_code == 130
    assert read_run(out / "cut")[0]["epochs_completed"] == 1
    assert cli("run", "--resume", out / "cut").exit_code == 0
    straight, resumed = (pd.read_csv(out / f"{n}/diagnostics.csv") for n in ("straight", "cut"))
    pd.testing.assert_frame_equal(straight, resumed)


def test_plot_diagnostics_writes_each_format_and_refuses_runs_without_diagnostics(tmp_path, cli):
    out = tmp_path / "runs"
    for kind in ("none", "torch"):
        config = write_config(tmp_path / f"{kind}.yaml", model={"name": "lenet"}, norm={"kind": kind},
                              train={"epochs": 1, "diagnostics": True})  # fmt: skip
        assert cli("run", config, "--out-dir", out).exit_code == 0
    png, svg, pdf = (tmp_path / f"inside.{suffix}" for suffix in ("png", "svg", "pdf"))
    result = cli("plot", out, "--diagnostics", "--out", png)
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 50_000
    assert cli("plot", out / "torch", "--diagnostics", "--layer", "norm4", "--out", svg).exit_code == 0
    assert b"<svg" in svg.read_bytes()[:500]
    assert cli("compare", out, "--diagnostics", "--plot", pdf).exit_code == 0
    assert pdf.read_bytes()[:4] == b"%PDF"
    bad = cli("plot", out, "--out", tmp_path / "inside.jpg")
    assert bad.exit_code == 2 and "must end in .png, .svg, .pdf" in bad.stderr
    plain = write_config(tmp_path / "plain.yaml", train={"epochs": 1})
    assert cli("run", plain, "--out-dir", tmp_path / "other").exit_code == 0
    none = cli("plot", tmp_path / "other", "--diagnostics", "--out", png)
    assert none.exit_code == 2 and "no run recorded diagnostics" in none.stderr


def test_units_path_starts_at_zero_and_only_grows():
    trainer = _trainer(diagnostics="true")
    _, rows = trainer.train_epoch(1)
    from bnbench.records import DIAGNOSTICS

    path = [r for r in rows[DIAGNOSTICS] if r["quantity"] == "units_path" and r["layer"] == "norm1"]
    values = [r["value"] for r in sorted(path, key=lambda r: r["step"])]
    assert values[0] == 0.0 and values[-1] > 0.0
    assert all(b >= a for a, b in zip(values, values[1:], strict=False))
