"""Config validation: every kind of bad input is one clear line naming file and key, exit 2, no run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bnbench.config import ConfigError, RunConfig, load_config
from bnbench.errors import UsageError

from conftest import write_config

CONFIGS = Path(__file__).parent.parent / "configs"


def test_defaults_fill_everything_and_name_is_the_stem(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text("model: {name: mlp}\n")
    cfg = load_config(path)
    assert cfg.name == "tiny"
    assert cfg.model.activation == "relu"  # the mlp's default, resolved
    assert cfg.train == RunConfig().train


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    load_config(path)


def test_each_model_has_a_config_per_norm_differing_only_in_norm_kind():
    for model in ("mlp", "convnet", "lenet"):
        names = ("none", "scratch", "bn", "layer", "group", "ghost", "renorm")
        dicts = [load_config(CONFIGS / f"{model}_{n}.yaml").to_dict() for n in names]
        for d in dicts:
            d.pop("name")
            d["norm"].pop("kind")
        assert all(d == dicts[0] for d in dicts)


@pytest.mark.parametrize(
    ("sections", "message"),
    [
        ({"train": {"lrr": 0.1}}, "train.lrr: unknown key (did you mean 'lr'?)"),
        ({"modle": {"name": "mlp"}}, "modle: unknown key (did you mean 'model'?)"),
        ({"train": {"lr": "fast"}}, "train.lr: expected a number, got 'fast' (str)"),
        ({"train": {"epochs": 2.5}}, "train.epochs: expected an integer, got 2.5 (float)"),
        ({"norm": {"affine": "yes"}}, "norm.affine: expected true or false, got 'yes' (str)"),
        ({"train": {"lr": 0}}, "train.lr: must be > 0, got 0.0"),
        ({"train": {"lr": -1}}, "train.lr: must be > 0, got -1.0"),
        ({"train": {"epochs": 0}}, "train.epochs: must be >= 1, got 0"),
        ({"train": {"batch_size": 0}}, "train.batch_size: must be >= 1, got 0"),
        ({"norm": {"eps": 0}}, "norm.eps: must be > 0, got 0.0"),
        ({"norm": {"momentum": 1.5}}, "norm.momentum: must be <= 1, got 1.5"),
        ({"norm": {"momentum": -0.1}}, "norm.momentum: must be >= 0, got -0.1"),
        (
            {"model": {"name": "resnet"}},
            "model.name: 'resnet' is not one of mlp, convnet, lenet (or a module:attribute import path, see "
            "docs/norms.md)",
        ),
        (
            {"norm": {"kind": "batch"}},
            "norm.kind: 'batch' is not one of none, scratch, torch, layer, torch_layer, group, torch_group, "
            "ghost, renorm (or a module:attribute import path, see docs/norms.md)",
        ),
        ({"norm": {"position": "between"}}, "norm.position: 'between' is not one of before, after"),
        ({"norm": {"groups": 0}}, "norm.groups: must be >= 1, got 0"),
        ({"norm": {"virtual_batch_size": 1}}, "norm.virtual_batch_size: must be >= 2, got 1"),
        ({"norm": {"rmax": 0.5}}, "norm.rmax: must be >= 1, got 0.5"),
        ({"norm": {"dmax": -1}}, "norm.dmax: must be >= 0, got -1.0"),
        ({"train": {"accumulate": 0}}, "train.accumulate: must be >= 1, got 0"),
        ({"train": {"accumulate": 5}}, "train.accumulate: train.batch_size 32 is not divisible into 5 micro-batches"),
        ({"train": {"precise_bn": 0}}, "train.precise_bn: must be >= 1, got 0"),
        (
            {"norm": {"kind": "renorm", "track_running_stats": False}},
            "norm.track_running_stats: renorm corrects batch statistics towards the running ones, "
            "so it needs them (true)",
        ),
        (
            {"norm": {"kind": "torch", "track_running_stats": False}, "train": {"precise_bn": 4}},
            "train.precise_bn: norm.track_running_stats is false: there are no running statistics to make precise",
        ),
        (
            {"norm": {"kind": "scratch", "track_running_stats": False}},
            "train.eval_bn: norm.track_running_stats is false: there are no running statistics, so evaluation uses "
            "each test batch's own (as nn.BatchNorm does); say so with train.eval_bn: batch",
        ),
        (
            {"norm": {"kind": "torch"}, "train": {"eval_batch_size": 1, "eval_bn": "batch"}},
            "train.eval_batch_size: torch with train.eval_bn batch evaluates with each test batch's statistics, "
            "which need at least 2 examples",
        ),
        (
            {"norm": {"kind": "renorm", "backward": "manual"}},
            "norm.backward: renorm has no manual backward; use autograd",
        ),
        ({"data": {"dataset": "cifar"}}, "data.dataset: 'cifar' is not one of mnist, fashion_mnist, synthetic"),
        ({"train": {"optimizer": "rmsprop"}}, "train.optimizer: 'rmsprop' is not one of sgd, adam"),
        ({"model": {"activation": "gelu"}}, "model.activation: 'gelu' is not one of sigmoid, relu, tanh"),
        ({"model": {"hidden": []}}, "model.hidden: expected a non-empty list, got [] (list)"),
        ({"model": {"hidden": [10, 0]}}, "model.hidden[1]: must be >= 1, got 0"),
        ({"train": "fast"}, "train: expected a mapping, got 'fast' (str)"),
        ({"model": {"dropout": 1.0}}, "model.dropout: must be <= 0.99, got 1.0"),
        (
            {"model": {"name": "lenet", "residual": True}},
            "model.residual: residual blocks are built for the mlp only, not lenet",
        ),
        (
            {"model": {"skip_init": True}},
            "model.skip_init: scales the residual branch, so it needs model.residual: true",
        ),
        (
            {"model": {"residual": True, "hidden": [32, 16]}},
            "model.residual: a skip goes around a block of the same width: give model.hidden two neighbouring layers "
            "of one width (got [32, 16])",
        ),
        ({"train": {"init_gain": 0}}, "train.init_gain: must be > 0, got 0.0"),
        ({"data": {"val_split": 0.95}}, "data.val_split: must be <= 0.9, got 0.95"),
        (
            {"data": {"train_subset": 4, "val_split": 0.1}},
            "data.val_split: holds out no example of data.train_subset 4",
        ),
    ],
)
def test_bad_values_name_file_key_and_problem(tmp_path, cli, sections, message):
    path = write_config(tmp_path / "bad.yaml", **sections)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {message}"
    result = cli("run", path, "--out-dir", tmp_path / "runs")  # and through the real CLI
    assert result.exit_code == 2
    assert result.stderr == f"error: {path}: {message}\n"
    assert not (tmp_path / "runs").exists()


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi", strict=True)
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (BOMB, "malformed YAML: expands beyond 10,000 values (aliases that multiply); not a config"),
        ("train: " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply to be a config"),
        ("train: {lr: 1}\ntrain: {epochs: 2}\n", "malformed YAML at line 2, column 1: duplicate key 'train'"),
        (
            "norm: {kind: " + "x" * 5000 + "}\n",
            "norm.kind: 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx... (5,002 characters) is not one of",
        ),
        (
            "name: " + "n" * 300 + "\n",
            "name: 'nnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnnn... (302 characters): longer than 200 bytes",
        ),
        ('name: "a\\0b"\n', "name: 'a\\x00b' cannot be a directory name"),
        ("model: {name: mlp\n", "malformed YAML at line 2, column 1: expected ',' or '}', but got '<stream end>'"),
        ("train:\n  lr: 0.1\n bad: 1\n", "malformed YAML at line 3, column 2"),
        ("- 1\n- 2\n", "a config must be a YAML mapping of keys, got a list"),
        ("", "the file is empty; a config is a YAML mapping (see configs/)"),
        (None, "no such config file"),
    ],
)
def test_unreadable_files(tmp_path, cli, text, message):
    path = tmp_path / "c.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(UsageError, match=re.escape(message)):
        load_config(path)  # the bomb is refused before it is built: it took 31 s and 2.7 GB before
    result = cli("run", path, "--out-dir", tmp_path / "runs")
    assert result.exit_code == 2 and result.stderr.startswith(f"error: {path}: {message}")
    assert len(result.stderr.splitlines()) == 1 and not (tmp_path / "runs").exists()


def test_overrides_are_yaml_and_errors_name_the_override(tmp_path):
    path = write_config(tmp_path / "c.yaml")
    cfg = load_config(path, ["train.lr=0.5", "model.hidden=[8, 8]", "norm.momentum=null"])
    assert (cfg.train.lr, cfg.model.hidden, cfg.norm.momentum) == (0.5, (8, 8), None)
    with pytest.raises(UsageError, match=r"^--set train.lr=abc: train.lr: expected a number"):
        load_config(path, ["train.lr=abc"])
    with pytest.raises(UsageError, match=r"^--set trian.lr=1: 'trian': unknown key \(did you mean 'train'\?\)"):
        load_config(path, ["trian.lr=1"])
    with pytest.raises(UsageError, match="expected dotted.key=value"):
        load_config(path, ["train.lr"])
    with pytest.raises(UsageError, match="'train.lr' has no sub-keys"):
        load_config(path, ["train.lr.x=1"])


def test_bad_config_via_cli_exits_2_and_creates_nothing(tmp_path, cli):
    path = write_config(tmp_path / "bad.yaml", train={"lrr": 0.1})
    good = write_config(tmp_path / "good.yaml")
    result = cli("run", good, path, "--out-dir", tmp_path / "runs")
    assert result.exit_code == 2
    assert "bad.yaml: train.lrr: unknown key (did you mean 'lr'?)" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()
