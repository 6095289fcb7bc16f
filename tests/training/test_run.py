"""`bnbench run` end to end: real loading code on tiny IDX files, run directory contents, naming, seeds."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import torch

import bnbench.training.train as train_module
from bnbench.config import load_config
from bnbench.errors import UsageError
from bnbench.records import METRIC_COLUMNS, STEPS
from bnbench.training.data import Data, load_data
from bnbench.training.train import LOG_POINTS_PER_EPOCH, Trainer

from conftest import read_run, write_config, write_mnist

META_FIELDS = {
    "status",
    "started_at",
    "ended_at",
    "command",
    "seed",
    "device",
    "device_name",
    "versions",
    "git_commit",
    "epochs_completed",
    "error",
}


def test_end_to_end_on_idx_files(tmp_path, cli, mnist_dir):
    config = write_config(tmp_path / "tiny.yaml", data={"dataset": "mnist", "train_subset": None, "normalize": True})
    result = cli("run", config, "--data-dir", mnist_dir, "--out-dir", tmp_path / "runs", "--device", "cpu")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "tiny"
    meta, metrics, steps = read_run(run)
    assert META_FIELDS <= meta.keys()
    assert meta["status"] == "completed" and meta["epochs_completed"] == 2 and meta["device"] == "cpu"
    assert set(meta["versions"]) == {"python", "torch", "torchvision", "bnbench"}
    assert tuple(metrics.columns) == (*METRIC_COLUMNS, "test_acc_batch_stats")
    assert list(metrics["epoch"]) == [1, 2]
    assert metrics[["train_acc", "test_acc"]].stack().between(0, 1).all()
    assert tuple(steps.columns) == STEPS.columns
    assert steps["examples_seen"].iloc[-1] == 2 * 256 and steps["step"].iloc[-1] == 2 * 8
    assert {"config.yaml", "model.pt", "checkpoint.pt"} <= {p.name for p in run.iterdir()}
    assert load_config(run / "config.yaml").data.dataset == "mnist"
    assert "tiny  epoch 2/2" in result.output  # plain one-line-per-epoch output off a terminal


def test_fashion_mnist_layout_and_env_data_dir(tmp_path, cli, monkeypatch):
    root = write_mnist(tmp_path / "data", folder="FashionMNIST")
    monkeypatch.setenv("BNBENCH_DATA_DIR", str(root))
    config = write_config(
        tmp_path / "f.yaml", model={"name": "lenet"}, data={"dataset": "fashion_mnist"}, train={"epochs": 1}
    )
    result = cli("run", config, "--out-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output


def test_no_norm_model_has_no_batch_stats_column(tmp_path, cli):
    config = write_config(tmp_path / "plain.yaml", norm={"kind": "none"}, train={"epochs": 1})
    assert cli("run", config, "--out-dir", tmp_path / "runs").exit_code == 0
    assert tuple(pd.read_csv(tmp_path / "runs/plain/metrics.csv").columns) == METRIC_COLUMNS


def test_never_overwrites_and_names_seeds(tmp_path, cli):
    config = write_config(tmp_path / "c.yaml", train={"epochs": 1})
    out = tmp_path / "runs"
    assert cli("run", config, "--out-dir", out).exit_code == 0
    assert cli("run", config, "--out-dir", out, "--set", "train.lr=0.2").exit_code == 0
    assert cli("run", config, "--out-dir", out, "--seeds", "0,1").exit_code == 0
    assert cli("run", config, "--out-dir", out, "--seeds", "1").exit_code == 0
    assert sorted(p.name for p in out.iterdir()) == ["c", "c-2", "c-s0", "c-s1", "c-s1-2"]
    assert load_config(out / "c-2/config.yaml").train.lr == 0.2
    assert read_run(out / "c-s1")[0]["seed"] == 1


def test_same_seed_same_numbers_other_seed_other_numbers(tmp_path, cli):
    config = write_config(tmp_path / "c.yaml", model={"name": "convnet"})
    out = tmp_path / "runs"
    for seed in ("0", "0", "1"):
        assert cli("run", config, "--out-dir", out, "--seed", seed).exit_code == 0
    cols = ["train_loss", "train_acc", "test_loss", "test_acc", "test_acc_batch_stats"]
    a, b, c = (read_run(out / name)[1][cols] for name in ("c", "c-2", "c-3"))
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(c)
    pd.testing.assert_frame_equal(read_run(out / "c")[2], read_run(out / "c-2")[2])


def test_manual_backward_reproduces_autograd_run(tmp_path, cli):
    out = tmp_path / "runs"
    for backward in ("autograd", "manual"):
        config = write_config(tmp_path / f"{backward}.yaml", model={"name": "lenet"}, norm={"backward": backward})
        assert cli("run", config, "--out-dir", out).exit_code == 0
    cols = ["train_loss", "train_acc", "test_loss", "test_acc"]
    a, m = read_run(out / "autograd")[1][cols], read_run(out / "manual")[1][cols]
    pd.testing.assert_frame_equal(a, m, rtol=1e-4, atol=1e-5)


def test_eval_bn_batch_swaps_the_extra_column(tmp_path, cli):
    config = write_config(tmp_path / "c.yaml", train={"epochs": 1, "eval_bn": "batch", "eval_batch_size": 8})
    assert cli("run", config, "--out-dir", tmp_path / "runs").exit_code == 0
    metrics = read_run(tmp_path / "runs/c")[1]
    assert tuple(metrics.columns) == (*METRIC_COLUMNS, "test_acc_running_stats")


def test_host_reads_per_epoch_are_bounded(monkeypatch):
    """The hot loop reads device values only at log points; .item() is never called per step."""
    cfg = load_config(None, ["data.dataset=synthetic", "train.batch_size=8", "model.name=mlp", "train.epochs=1"])
    data: Data = load_data(cfg.data, None, torch.device("cpu"))  # synthetic needs no folder
    trainer = Trainer.create(cfg, data, torch.device("cpu"))
    reads, items = [], []
    real_read, real_item = train_module.read_back, torch.Tensor.item
    monkeypatch.setattr(train_module, "read_back", lambda *t: reads.append(1) or real_read(*t))
    monkeypatch.setattr(torch.Tensor, "item", lambda self: items.append(1) or real_item(self))
    trainer.run_epoch(1)
    steps = trainer.steps_per_epoch
    assert steps == 256
    assert len(reads) <= LOG_POINTS_PER_EPOCH + 2  # log points (the last step is one), two evaluations
    assert len(items) == 0


@pytest.mark.parametrize("size", [33, 64])
def test_last_batch_of_one_joins_the_previous(tmp_path, cli, size):
    config = write_config(tmp_path / "c.yaml", data={"train_subset": size}, train={"epochs": 1, "batch_size": 32})
    assert cli("run", config, "--out-dir", tmp_path / "runs").exit_code == 0
    steps = read_run(tmp_path / "runs/c")[2]
    assert steps["examples_seen"].iloc[-1] == size and steps["step"].iloc[-1] == size // 32


@pytest.mark.parametrize(("kind", "equal"), [("none", True), ("scratch", False)])
def test_accumulating_4_micro_batches_equals_one_batch_only_without_bn(tmp_path, cli, kind, equal):
    out = tmp_path / "runs"
    for k in (1, 4):
        train = {"batch_size": 256, "accumulate": k, "epochs": 3}
        config = write_config(tmp_path / f"acc{k}.yaml", norm={"kind": kind}, data={"train_subset": 1024}, train=train)
        assert cli("run", config, "--out-dir", out).exit_code == 0
    cols = ["train_loss", "train_acc", "test_loss", "test_acc"]
    one, four = read_run(out / "acc1")[1][cols], read_run(out / "acc4")[1][cols]
    steps = read_run(out / "acc4")[2]
    assert steps["step"].iloc[-1] == 3 * 4  # optimizer steps, not micro-batches
    if equal:
        pd.testing.assert_frame_equal(one, four, rtol=1e-5, atol=1e-6)
    else:
        assert (one["train_loss"] - four["train_loss"]).abs().max() > 1e-4


def test_precise_bn_changes_evaluation_not_training(tmp_path, cli):
    out = tmp_path / "runs"
    for name, extra in (("ema", {}), ("precise", {"precise_bn": 4})):
        config = write_config(tmp_path / f"{name}.yaml", norm={"kind": "torch"}, train=extra)
        assert cli("run", config, "--out-dir", out).exit_code == 0
    ema, precise = read_run(out / "ema")[1], read_run(out / "precise")[1]
    pd.testing.assert_frame_equal(ema[["train_loss", "train_acc"]], precise[["train_loss", "train_acc"]])
    pd.testing.assert_series_equal(ema["test_acc_batch_stats"], precise["test_acc_batch_stats"])
    assert not ema["test_loss"].equals(precise["test_loss"])


@pytest.mark.parametrize("kind", ["layer", "group", "ghost", "renorm"])
def test_every_new_norm_trains_through_the_cli(tmp_path, cli, kind):
    config = write_config(tmp_path / "c.yaml", model={"name": "lenet"}, norm={"kind": kind, "position": "after"},
                          train={"epochs": 1})  # fmt: skip
    result = cli("run", config, "--out-dir", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    metrics = read_run(tmp_path / "runs/c")[1]
    assert ("test_acc_batch_stats" in metrics) == (kind in ("ghost", "renorm"))


def test_learning_rate_schedules_are_computed_from_the_step():
    from bnbench.training.train import lr_at

    tc = load_config(None, ["train.schedule=exponential", "train.lr=0.5", "train.lr_factor=1.01"]).train
    assert lr_at(0, tc, 100) == 0.5 and lr_at(10, tc, 100) == pytest.approx(0.5 * 1.01**10)
    tc = load_config(None, ["train.schedule=cosine", "train.lr=0.5"]).train
    assert lr_at(0, tc, 100) == 0.5 and lr_at(50, tc, 100) == pytest.approx(0.25) and lr_at(100, tc, 100) == 0.0
    with pytest.raises(UsageError, match="lr_factor"):
        load_config(None, ["train.lr_factor=1.01"])


def test_with_bn_weight_decay_is_a_learning_rate_schedule():
    """van Laarhoven 2017: with BN (no affine) after every trainable layer and the output layer frozen, SGD with
    weight decay lam at lr eta takes the same steps in direction as no decay at lr eta * (1 - eta*lam)^-(2t+1):
    the two runs' losses agree step by step (and differ from no decay at constant lr)."""
    eta, lam = 0.1, 0.05
    common = ["data.dataset=synthetic", "model.name=mlp", "model.hidden=[32, 32]", "norm.kind=torch",
              "norm.affine=false", "train.trainable=all_but_output", "train.batch_size=64"]  # fmt: skip
    runs = {
        "decay": [f"train.lr={eta}", f"train.weight_decay={lam}"],
        "schedule": [
            "train.schedule=exponential",
            f"train.lr={eta / (1 - eta * lam)!r}",
            f"train.lr_factor={(1 - eta * lam) ** -2!r}",
        ],  # fmt: skip
        "constant": [f"train.lr={eta}"],
    }
    losses = {}
    for name, overrides in runs.items():
        cfg = load_config(None, common + overrides)
        trainer = Trainer.create(cfg, load_data(cfg.data, None, torch.device("cpu")), torch.device("cpu"))
        _, rows = trainer.train_epoch(1)
        losses[name] = [r["train_loss"] for r in next(iter(rows.values()))]
    assert losses["decay"] == pytest.approx(losses["schedule"], rel=1e-4)
    assert losses["decay"] != pytest.approx(losses["constant"], rel=1e-3)


def test_eval_order_changes_only_what_batch_statistics_see():
    results = {}
    for order in ("stored", "shuffled", "class_sorted"):
        cfg = load_config(None, ["data.dataset=synthetic", "model.name=mlp", "norm.kind=torch",
                                 f"train.eval_order={order}", "train.eval_batch_size=32"])  # fmt: skip
        trainer = Trainer.create(cfg, load_data(cfg.data, None, torch.device("cpu")), torch.device("cpu"))
        trainer.train_epoch(1)
        results[order] = (trainer.evaluate(trainer.data.test, False)[1], trainer.evaluate(trainer.data.test, True)[1])
    running = [r[0] for r in results.values()]
    assert running == pytest.approx([running[0]] * 3)  # running statistics: each example alone
    assert results["class_sorted"][1] != pytest.approx(results["shuffled"][1], abs=1e-3)  # one class per batch


def test_ghost_batch_statistics_evaluation_normalizes_each_test_batch_whole(tmp_path, cli):
    """Ghost BN with virtual_batch_size equal to the training batch is nn.BatchNorm; evaluated with batch
    statistics it must see each eval batch whole (eval_batch_size), not split into virtual batches."""
    config = write_config(tmp_path / "c.yaml", train={"epochs": 1, "eval_bn": "batch"})
    runs = {
        "torch": ["norm.kind=torch"],
        "ghost": ["norm.kind=ghost", "norm.virtual_batch_size=32"],
        "torch_eval32": ["norm.kind=torch", "train.eval_batch_size=32"],
    }
    for name, sets in runs.items():
        args = [a for s in sets for a in ("--set", s)]
        result = cli("run", config, *args, "--name", name, "--out-dir", tmp_path / "runs", "--device", "cpu")
        assert result.exit_code == 0, result.output
    torch_bn, ghost, torch_32 = (read_run(tmp_path / "runs" / name)[1].iloc[-1] for name in runs)
    assert ghost["train_loss"] == pytest.approx(torch_bn["train_loss"], abs=1e-6)
    assert ghost["test_loss"] == pytest.approx(torch_bn["test_loss"], abs=1e-5)  # eval batches of 256, whole
    assert ghost["test_acc"] == torch_bn["test_acc"]
    assert ghost["test_loss"] != pytest.approx(torch_32["test_loss"], abs=1e-4)  # not batches of 32
    assert ghost["test_acc_running_stats"] == torch_bn["test_acc_running_stats"]


def test_norm_weight_decay_keeps_decay_off_the_norms_scale_and_shift(tmp_path, cli):
    """train.weight_decay reaches every parameter (PyTorch's default), the norms' γ and β too;
    train.norm_weight_decay: 0 leaves γ/β and the biases undecayed while the weights still decay."""
    config = write_config(tmp_path / "c.yaml", norm={"kind": "torch"}, train={"epochs": 2, "lr": 0.1})
    runs = {"plain": ["train.weight_decay=0"], "all": ["train.weight_decay=0.5"],
            "weights": ["train.weight_decay=0.5", "train.norm_weight_decay=0"]}  # fmt: skip
    models = {}
    for name, sets in runs.items():
        args = [a for s in sets for a in ("--set", s)]
        result = cli("run", config, *args, "--name", name, "--out-dir", tmp_path / "runs", "--device", "cpu")
        assert result.exit_code == 0, result.output
        models[name] = torch.load(tmp_path / "runs" / name / "checkpoint.pt", weights_only=False)

    def gamma(name: str) -> float:
        return models[name]["model"]["norm1.norm.weight"].mean().item()

    def weights(name: str) -> float:
        return models[name]["model"]["fc1.weight"].norm().item()

    assert gamma("all") < 0.7 * gamma("plain")  # decayed γ: 16 steps of (1 - 0.05)
    assert gamma("weights") == pytest.approx(gamma("plain"), rel=0.05)  # γ not decayed
    assert weights("weights") < 0.8 * weights("plain") and weights("all") < 0.8 * weights("plain")
    groups = models["weights"]["optimizer"]["param_groups"]
    biases = [k for k in models["weights"]["model"] if k.endswith("bias") and ".norm." not in k]
    assert biases and [g["weight_decay"] for g in groups] == [0.5, 0.0]
    assert len(groups[1]["params"]) == 2 + len(biases)  # γ, β and every bias (timm's 1-D rule)
    assert len(models["all"]["optimizer"]["param_groups"]) == 1


def test_bfloat16_precision_trains_on_the_cpu_and_is_recorded(tmp_path, cli):
    config = write_config(tmp_path / "c.yaml", train={"epochs": 1})
    out = tmp_path / "runs"
    for name, precision in (("bf16", "bfloat16"), ("fp32", "float32")):
        args = ("--set", f"train.precision={precision}", "--device", "cpu", "--out-dir", out / name)
        result = cli("run", config, *args)
        assert result.exit_code == 0, result.output
    meta, metrics, _ = read_run(out / "bf16/c")
    assert meta["status"] == "completed" and metrics["train_loss"].notna().all()
    assert load_config(out / "bf16/c/config.yaml").train.precision == "bfloat16"
    assert load_config(out / "fp32/c/config.yaml").train.precision == "float32"
    # autocast really ran: bfloat16 arithmetic gives other numbers than float32 from the same seed
    assert not metrics["train_loss"].equals(read_run(out / "fp32/c")[1]["train_loss"])
    result = cli("compare", out / "bf16/c", out / "fp32/c")
    assert result.exit_code == 0, result.output
    assert "precision" in result.output


def test_float16_precision_off_cuda_is_one_line_exit_2_and_no_run_folder(tmp_path):
    config = write_config(tmp_path / "c.yaml", train={"epochs": 1})
    out = tmp_path / "runs"
    args = ["run", str(config), "--set", "train.precision=float16", "--device", "cpu", "--out-dir", str(out)]
    result = subprocess.run([sys.executable, "-m", "bnbench", *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "train.precision float16" in result.stderr
    assert "cuda" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists() or not any(out.iterdir())


def test_what_a_run_records_is_what_it_used(tmp_path, cli):
    """One image at a time with running statistics (the deployment case) runs, with the batch-statistics
    column left empty; without running statistics there is no second evaluation column at all."""
    config = write_config(tmp_path / "c.yaml", train={"epochs": 1})
    result = cli("run", config, "--set", "norm.kind=torch", "--set", "train.eval_batch_size=1", "--name", "one",
                 "--out-dir", tmp_path / "runs", "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = read_run(tmp_path / "runs" / "one")[1]
    assert metrics["test_acc_batch_stats"].isna().all() and metrics["test_acc"].notna().all()
    result = cli("run", config, "--set", "norm.kind=torch", "--set", "norm.track_running_stats=false",
                 "--set", "train.eval_bn=batch", "--name", "none", "--out-dir", tmp_path / "runs",
                 "--device", "cpu")  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = read_run(tmp_path / "runs" / "none")[1]
    assert "test_acc_running_stats" not in metrics and "test_acc_batch_stats" not in metrics
