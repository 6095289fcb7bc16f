"""Every model x norm builds, and runs forward and backward (2-D norms in mlp, 4-D in the conv nets)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnbench.config import DEFAULT_ACTIVATION, MODEL_NAMES, NORM_KINDS, ModelConfig, NormConfig
from bnbench.nn.models import MODELS, AvgPool2x2, NormAct, build_model
from bnbench.nn.norms import NORMS, BatchNorm, BatchRenorm, GhostBatchNorm, GroupNorm, LayerNorm, make_norm_factory

NORM_TYPES = {
    "none": nn.Identity,
    "scratch": BatchNorm,
    "torch": (nn.BatchNorm1d, nn.BatchNorm2d),
    "layer": LayerNorm,
    "torch_layer": nn.LayerNorm,
    "group": GroupNorm,
    "torch_group": nn.GroupNorm,
    "ghost": GhostBatchNorm,
    "renorm": BatchRenorm,
}
NORM_COUNT = {"mlp": 1, "convnet": 2, "lenet": 4}


@pytest.mark.parametrize("kind", NORM_KINDS)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_builds_and_trains_one_step(name, kind):
    model = build_model(
        ModelConfig(name=name, activation=DEFAULT_ACTIVATION[name]), make_norm_factory(NormConfig(kind=kind))
    )
    norms = [m.norm for m in model.modules() if isinstance(m, NormAct)]
    assert len(norms) == NORM_COUNT[name]
    assert all(isinstance(m, NORM_TYPES[kind]) for m in norms)
    x = torch.rand(4, 1, 28, 28)
    out = model(x)
    assert out.shape == (4, 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_lenet_is_the_tutorial_architecture():
    model = build_model(ModelConfig(name="lenet", activation="sigmoid"), make_norm_factory(NormConfig(kind="torch")))
    kinds = [type(m).__name__ for m in model.modules() if not isinstance(m, (nn.Sequential, NormAct))]
    assert kinds == [
        "Conv2d",
        "BatchNorm2d",
        "Sigmoid",
        "AvgPool2x2",
        "Conv2d",
        "BatchNorm2d",
        "Sigmoid",
        "AvgPool2x2",
        "Flatten",
        "Linear",
        "BatchNorm1d",
        "Sigmoid",
        "Linear",
        "BatchNorm1d",
        "Sigmoid",
        "Linear",
    ]
    weights = sum(p.numel() for p in model.parameters() if p.dim() > 1)
    assert weights == 6 * 25 + 16 * 6 * 25 + 256 * 120 + 120 * 84 + 840


def test_mlp_hidden_layers_follow_the_config():
    cfg = ModelConfig(name="mlp", activation="sigmoid", hidden=(100, 100, 100))
    model = build_model(cfg, make_norm_factory(NormConfig(kind="scratch")))
    widths = [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]
    assert widths == [100, 100, 100, 10]
    assert sum(isinstance(m, nn.Sigmoid) for m in model.modules()) == 3


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_norm_positions_have_the_same_names_for_every_norm(name):
    """Diagnostics and comparisons line runs up by these names."""
    names = set()
    for kind in NORM_KINDS:
        model = build_model(ModelConfig(name=name, activation="relu"), make_norm_factory(NormConfig(kind=kind)))
        names.add(tuple(n for n, m in model.named_modules() if isinstance(m, NormAct)))
    (positions,) = names
    assert positions == tuple(f"norm{i}" for i in range(1, NORM_COUNT[name] + 1))


def test_position_after_puts_the_norm_after_the_activation():
    cfg = ModelConfig(name="mlp", activation="sigmoid", hidden=(8,))
    before = build_model(cfg, make_norm_factory(NormConfig(kind="torch")), position="before")
    after = build_model(cfg, make_norm_factory(NormConfig(kind="torch")), position="after")
    after.load_state_dict(before.state_dict())
    x = torch.rand(16, 1, 28, 28)
    hidden = before.fc1(before.flatten(x))
    torch.testing.assert_close(before.norm1(hidden), torch.sigmoid(before.norm1.norm(hidden)))
    torch.testing.assert_close(after.norm1(hidden), after.norm1.norm(torch.sigmoid(hidden)))


def test_registries_build_exactly_the_config_names():
    assert tuple(MODELS) == MODEL_NAMES and tuple(NORMS) == NORM_KINDS


@pytest.mark.parametrize("shape", [(256, 6, 24, 24), (3, 16, 8, 8), (2, 3, 5, 7)])
def test_avg_pool_2x2_equals_nn_avgpool2d_bit_for_bit(shape):
    x = (torch.randn(shape) * 3 + 1).requires_grad_()
    ours, ref = AvgPool2x2()(x), nn.AvgPool2d(2)(x)
    grad = torch.randn_like(ref)
    assert torch.equal(ours, ref)
    assert torch.equal(torch.autograd.grad(ours, x, grad)[0], torch.autograd.grad(ref, x, grad)[0])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_a_seed_fixes_the_initial_weights_and_data_order_whatever_the_norm(name):
    """Why claims pair runs by seed: the norm layers draw no random numbers, so the same seed gives every
    norm the same initial Linear/Conv weights and the same order of training examples."""
    from bnbench.config import load_config
    from bnbench.training.data import load_data
    from bnbench.training.train import Trainer

    def start(kind: str) -> tuple[list[torch.Tensor], torch.Tensor]:
        cfg = load_config(None, ["data.dataset=synthetic", f"model.name={name}", f"norm.kind={kind}", "train.seed=7"])
        trainer = Trainer.create(cfg, load_data(cfg.data, None, torch.device("cpu")), torch.device("cpu"))
        weights = [m.weight.detach().clone() for m in trainer.model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
        return weights, torch.randperm(100, generator=trainer.order)

    reference, order = start("none")
    for kind in NORM_KINDS[1:]:
        weights, other = start(kind)
        assert all(torch.equal(a, b) for a, b in zip(reference, weights, strict=True)), kind
        assert torch.equal(order, other), kind


def test_noise_moves_every_unit_each_training_step_and_is_off_in_eval():
    from bnbench.nn.norms import ShiftNoise, keep_noise_draws

    torch.manual_seed(3)
    noise = ShiftNoise(4, 1.0)
    x = torch.randn(256, 4, 3, 3)
    first, second = noise(x), noise(x)
    assert not torch.equal(first, second) and noise.draws == 2  # a new shift and scale every step
    shifted = (first - x * (first / x).mean((0, 2, 3), keepdim=True)).mean((0, 2, 3))
    assert shifted.abs().max() <= 1.0 + 1e-4  # the shift stays within the strength
    with keep_noise_draws(nn.Sequential(noise)):
        noise(x)
    assert noise.draws == 2  # a probe's pass leaves the counter as it was
    again = ShiftNoise(4, 1.0)
    again.load_state_dict(noise.state_dict())  # a resumed run draws what the first would have drawn next
    assert torch.equal(again(x), noise(x))
    noise.eval()
    assert torch.equal(noise(x), x)


def test_noise_zero_adds_no_module_and_noise_keeps_the_initial_weights():
    cfg = ModelConfig(name="mlp", activation="sigmoid", hidden=(8, 8))

    def build(noise: float) -> nn.Module:
        torch.manual_seed(0)
        return build_model(cfg, make_norm_factory(NormConfig(kind="torch")), "xavier", "before", noise)

    plain, noisy = build(0.0), build(0.5)
    assert not any("noise" in name for name, _ in plain.named_modules())
    assert sum("noise" in name for name, _ in noisy.named_modules()) == 2
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), noisy.parameters(), strict=True))


@pytest.mark.parametrize("which", ["norm", "norm_output", "random"])
def test_trainable_subsets_move_only_what_they_name(which):
    from bnbench.config import load_config
    from bnbench.training.data import load_data
    from bnbench.training.train import Trainer

    cfg = load_config(
        None, ["data.dataset=synthetic", "model.name=lenet", f"train.trainable={which}", "train.diagnostics=true"]
    )  # fmt: skip (a probe sees frozen layers too)
    trainer = Trainer.create(cfg, load_data(cfg.data, None, torch.device("cpu")), torch.device("cpu"))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train_epoch(1, max_steps=3)
    moved = {n: int((p.detach() != before[n]).sum()) for n, p in trainer.model.named_parameters()}
    norm_values = sum(p.numel() for n, p in trainer.model.named_parameters() if ".norm." in n)
    output = [n for n, _ in trainer.model.named_parameters()][-2:]  # the last Linear's weight and bias
    for name, count in moved.items():
        if ".norm." in name:
            assert (count > 0) == (which != "random"), name
        elif name in output and which == "norm_output":
            assert count > 0, name
        elif which != "random":
            assert count == 0, name
    if which == "random":  # as many values as the norms have, chosen among the others
        assert 0 < sum(moved.values()) <= norm_values


def test_trainable_subsets_need_a_norm_with_scale_and_shift(tmp_path, cli):
    from conftest import write_config

    for train, norm in (({"trainable": "norm"}, {"kind": "none"}), ({"trainable": "random", "weight_decay": 0.1}, {})):
        config = write_config(tmp_path / "c.yaml", train={"epochs": 1, **train}, norm=norm)
        result = cli("run", config, "--out-dir", tmp_path / "runs")
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "runs").exists()
