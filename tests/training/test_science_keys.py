"""The keys the science studies stand on: model.dropout, model.residual and skip_init, train.init_gain,
data.val_split; and the landscape probe that measures the landscape, not the injected noise."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn

from bnbench.config import load_config
from bnbench.nn.models import NormAct, ResidualMLP, build_run_model, feeding_layers
from bnbench.training.data import load_data
from bnbench.training.diagnostics import Diagnostics
from bnbench.training.train import Trainer, seed_everything

from conftest import read_run, write_config

TIMING = ["epoch_seconds", "examples_per_second"]


def _cfg(*overrides: str):
    return load_config(None, ["data.dataset=synthetic", "model.name=mlp", "train.batch_size=64", *overrides])


def _model(*overrides: str, seed: int = 0) -> nn.Module:
    seed_everything(seed)
    return build_run_model(_cfg(*overrides))


def test_residual_mlp_names_its_positions_as_the_plain_mlp_and_skips_equal_widths():
    plain = _model("model.hidden=[32, 32, 16, 16]")
    residual = _model("model.hidden=[32, 32, 16, 16]", "model.residual=true")
    assert isinstance(residual, ResidualMLP) and residual.skips == [2, 4]
    names = [n for n, m in plain.named_modules() if isinstance(m, NormAct)]
    assert names == [n for n, m in residual.named_modules() if isinstance(m, NormAct)] == ["norm1", "norm2", "norm3",
                                                                                           "norm4"]  # fmt: skip
    assert [n for n, _ in plain.named_parameters()] == [n for n, _ in residual.named_parameters()]  # same init draws
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():  # by hand: x + block(x) where the widths match
        h1 = residual.norm1(residual.fc1(residual.flatten(x)))
        h2 = h1 + residual.norm2(residual.fc2(h1))
        h3 = residual.norm3(residual.fc3(h2))
        h4 = h3 + residual.norm4(residual.fc4(h3))
        assert torch.allclose(residual(x), residual.out(h4))


def test_skip_init_makes_every_skipped_block_the_identity_at_initialisation_and_learns_its_scalar():
    model = _model("model.hidden=[32, 32, 32]", "model.residual=true", "model.skip_init=true", "norm.kind=none")
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(x), model.out(model.norm1(model.fc1(model.flatten(x)))))
    assert {n for n, _ in model.named_parameters() if n.startswith("skip")} == {"skip2", "skip3"}
    torch.nn.functional.cross_entropy(model(x), torch.arange(8)).backward()
    assert model.skip2.grad is not None and model.skip2.grad.abs() > 0  # it trains away from 0


def test_init_gain_scales_the_layers_that_feed_a_norm_and_bn_undoes_it():
    one, ten = _model("model.hidden=[32, 32]"), _model("model.hidden=[32, 32]", "train.init_gain=10")
    assert feeding_layers(one) == [one.fc1, one.fc2]
    assert torch.allclose(ten.fc1.weight, 10 * one.fc1.weight) and torch.allclose(ten.fc2.weight, 10 * one.fc2.weight)
    assert torch.equal(ten.out.weight, one.out.weight) and torch.equal(ten.fc1.bias, one.fc1.bias)
    x = torch.randn(64, 1, 28, 28)
    for model in (one, ten):
        model.train()
    with torch.no_grad():  # BN(aWu + b) = BN(Wu) up to eps (Ioffe & Szegedy 2015, §3.3); no norm: not at all
        assert torch.allclose(ten(x), one(x), atol=1e-3)
        none1, none10 = (_model("model.hidden=[32, 32]", "norm.kind=none", f"train.init_gain={g}") for g in (1, 10))
        assert not torch.allclose(none10(x), none1(x), atol=1e-1)


def test_dropout_follows_every_position_and_is_off_in_eval():
    model = _model("model.hidden=[32, 32]", "model.dropout=0.5")
    assert [type(m.drop) for m in model.modules() if isinstance(m, NormAct)] == [nn.Dropout, nn.Dropout]
    x = torch.randn(16, 1, 28, 28)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))
    assert not hasattr(_model().norm1, "drop")  # 0: no module, the same state dict as before the key existed


def test_val_split_holds_out_the_last_examples_and_records_val_columns(tmp_path, cli, mnist_dir):
    cfg = load_config(None, ["data.dataset=mnist", "data.val_split=0.25"])
    data = load_data(cfg.data, mnist_dir, torch.device("cpu"))
    whole = load_data(load_config(None, ["data.dataset=mnist"]).data, mnist_dir, torch.device("cpu"))
    assert len(data.train) == 192 and len(data.val) == 64
    assert torch.equal(data.val.x, whole.train.x[192:]) and torch.equal(data.train.x, whole.train.x[:192])
    config = write_config(tmp_path / "c.yaml", data={"dataset": "mnist", "train_subset": 200, "val_split": 0.2})
    assert cli("run", config, "--out-dir", tmp_path / "runs", "--data-dir", mnist_dir).exit_code == 0
    meta, metrics, steps = read_run(tmp_path / "runs/c")
    assert list(metrics.columns[-2:]) == ["val_loss", "val_acc"] and metrics["val_acc"].between(0, 1).all()
    assert steps["examples_seen"].max() == 2 * 160  # 40 of the 200 held out, never trained on


def test_the_landscape_probe_measures_the_weights_not_the_injected_noise():
    # A noisy model and a clean one with the same weights: the probe must give the same numbers.
    cfg = _cfg("model.hidden=[32, 32]", "train.diagnostics=true", "norm.kind=torch", "norm.noise=1.0")
    data = load_data(cfg.data, None, torch.device("cpu"))
    noisy, plain = (Trainer.create(c, data, torch.device("cpu")) for c in (cfg, _cfg("model.hidden=[32, 32]",
                    "train.diagnostics=true", "norm.kind=torch")))  # fmt: skip
    plain.model.load_state_dict(noisy.model.state_dict(), strict=False)
    for trainer in (noisy, plain):
        trainer.model.zero_grad()
        torch.nn.functional.cross_entropy(trainer.model(trainer.diagnostics.x), trainer.diagnostics.y).backward()

    def probe(trainer: Trainer) -> dict[str, float]:
        params = [p for p in trainer.model.parameters() if p.requires_grad]
        buffers = {n: b.clone() for n, b in trainer.model.named_buffers()}
        return {q: float(v) for _, q, v in trainer.diagnostics._landscape(params, 0.1, buffers)}

    twice, clean = [probe(noisy), probe(noisy)], probe(plain)
    assert twice[0] == twice[1]  # no fresh draws: the same numbers every time
    for quantity, value in clean.items():
        assert math.isclose(twice[0][quantity], value, rel_tol=1e-5, abs_tol=1e-7), quantity
    assert noisy.model.training and all(m.training for m in noisy.model.modules())  # the noise is back on


def test_grad_curvature_is_the_quadratic_form_of_the_hessian_along_the_gradient():
    cfg = _cfg("model.hidden=[8]", "train.diagnostics=true", "norm.kind=scratch", "norm.backward=manual",
               "train.probe_size=16")  # fmt: skip
    trainer = Trainer.create(cfg, load_data(cfg.data, None, torch.device("cpu")), torch.device("cpu"))
    diagnostics: Diagnostics = trainer.diagnostics
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    gradient, curvature, _ = diagnostics._curvature_pass(params)
    flat = torch.cat([p.detach().flatten() for p in params])
    g = torch.cat([x.flatten() for x in gradient]).double()

    def loss_of(vector: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(vector, [p.numel() for p in params])
        weights = {n: c.view_as(p) for (n, p), c in zip(
            [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad], chunks, strict=True)}  # fmt: skip
        out = torch.func.functional_call(trainer.model, weights, (diagnostics.x,))
        return torch.nn.functional.cross_entropy(out, diagnostics.y)

    hessian = torch.autograd.functional.hessian(loss_of, flat).double()  # the reference: the whole Hessian
    assert math.isclose(float(curvature), float(g @ hessian @ g / (g @ g)), rel_tol=1e-3)


def test_metrics_are_identical_with_and_without_diagnostics_under_dropout(tmp_path, cli):
    out = tmp_path / "runs"
    for name, on in (("off", False), ("on", True)):
        config = write_config(tmp_path / f"{name}.yaml", model={"dropout": 0.3}, train={"diagnostics": on})
        assert cli("run", config, "--out-dir", out).exit_code == 0
    off, on = read_run(out / "off"), read_run(out / "on")
    pd.testing.assert_frame_equal(off[1].drop(columns=TIMING), on[1].drop(columns=TIMING))
    pd.testing.assert_frame_equal(off[2], on[2])


@pytest.mark.parametrize("overrides", [["model.residual=true", "model.hidden=[16, 16]"], ["train.init_gain=0.1"]])
def test_the_same_config_and_seed_give_the_same_numbers_with_the_new_keys(tmp_path, cli, overrides):
    model = {"hidden": [16, 16], "residual": "residual=true" in overrides[0]}
    train = {"epochs": 2, "init_gain": 0.1 if "init_gain" in overrides[0] else 1.0}
    config = write_config(tmp_path / "c.yaml", model={**model, "dropout": 0.2}, train=train)
    assert cli("run", config, "--out-dir", tmp_path / "a").exit_code == 0
    assert cli("run", config, "--out-dir", tmp_path / "b").exit_code == 0
    pd.testing.assert_frame_equal(read_run(tmp_path / "a/c")[1].drop(columns=TIMING),
                                  read_run(tmp_path / "b/c")[1].drop(columns=TIMING))  # fmt: skip
