"""`bnbench bench` end to end on synthetic data (no files), and the torch.compile path on the CPU."""

from __future__ import annotations

import json

import pandas as pd

from conftest import read_run, write_config

FIELDS = {"model", "norm", "device", "reference_examples_per_second", "bnbench_examples_per_second", "ratio",
          "peak_rss_mb", "step_time_vs_counterpart", "counterpart", "eval_seconds",
          "reference_num_workers"}  # fmt: skip


def test_bench_writes_one_row_per_model_and_norm(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("BNBENCH_DATA_DIR", str(tmp_path / "no-data"))  # falls back to synthetic data
    out = tmp_path / "bench.json"
    result = cli("bench", "--device", "cpu", "--models", "mlp", "--norms", "scratch,torch", "--rounds", "1",
                 "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())
    assert [(r["model"], r["norm"]) for r in rows] == [("mlp", "scratch"), ("mlp", "torch")]
    for row in rows:
        assert FIELDS <= row.keys()
        assert row["dataset"] == "synthetic" and row["device"] == "cpu"
        assert row["ratio"] == row["bnbench_examples_per_second"] / row["reference_examples_per_second"] > 0
        assert row["reference_num_workers"] in (0, 2)
    assert [r["counterpart"] for r in rows] == ["torch", "torch"] and rows[1]["step_time_vs_counterpart"] == 1.0
    assert "training throughput on cpu" in result.stdout


def test_bench_rejects_unknown_names(cli):
    result = cli("bench", "--models", "resnet")
    assert result.exit_code == 2 and "--models: unknown resnet; choose from mlp, convnet, lenet" in result.stderr


def test_compiled_training_matches_eager(tmp_path, cli):
    """train.compile goes through torch.compile (inductor on the CPU, CUDA graphs on a GPU)."""
    out = tmp_path / "runs"
    for compile_ in (False, True):
        config = write_config(tmp_path / f"c{compile_}.yaml", train={"epochs": 1, "compile": compile_})
        assert cli("run", config, "--out-dir", out).exit_code == 0
    cols = ["train_loss", "train_acc", "test_loss", "test_acc"]
    eager, compiled = read_run(out / "cFalse")[1][cols], read_run(out / "cTrue")[1][cols]
    pd.testing.assert_frame_equal(eager, compiled, rtol=1e-4, atol=1e-4)


def test_bench_norms_are_the_registry_plus_manual_variants():
    from bnbench.config import NORM_KINDS
    from bnbench.nn.norms import COUNTERPARTS
    from bnbench.tools.bench import NORMS, counterpart

    assert [n for n in NORMS if not n.endswith("_manual")] == list(NORM_KINDS)
    assert {counterpart(n) for n in NORMS} <= set(NORM_KINDS)
    assert counterpart("layer_manual") == COUNTERPARTS["layer"] == "torch_layer"
    assert counterpart("ghost") == counterpart("none") == "torch"


def test_bench_without_reference_times_norms_against_counterparts(tmp_path, cli, monkeypatch):
    monkeypatch.setenv("BNBENCH_DATA_DIR", str(tmp_path / "no-data"))
    out = tmp_path / "bench.json"
    result = cli("bench", "--device", "cpu", "--models", "mlp", "--norms", "layer,torch_layer", "--rounds", "1",
                 "--no-reference", "--out", out)  # fmt: skip
    assert result.exit_code == 0, result.output
    layer, torch_layer = json.loads(out.read_text())
    assert layer["reference_examples_per_second"] is None and layer["ratio"] is None
    assert layer["counterpart"] == "torch_layer" and layer["step_time_vs_counterpart"] > 0
    assert torch_layer["step_time_vs_counterpart"] == 1.0
