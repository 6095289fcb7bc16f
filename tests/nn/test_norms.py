"""bnbench's BatchNorm against nn.BatchNorm: the `bnbench check` grid, gradcheck, and the tutorial pitfalls."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from bnbench.config import ModelConfig, NormConfig
from bnbench.nn.models import build_model
from bnbench.nn.norms import (
    BatchNorm,
    BatchRenorm,
    GhostBatchNorm,
    LayerNorm,
    batch_stats_eval,
    group_count,
    make_norm_factory,
    precise_statistics,
)
from bnbench.tools.check import TOLERANCE, cases, compare_case, extra_checks, gradcheck, gradcheck_cases


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", cases(), ids=lambda c: c.name.replace(" ", "-"))
def test_matches_nn_batchnorm(case, dtype):
    diffs = compare_case(case, dtype)
    assert max(diffs.values()) <= TOLERANCE[dtype], diffs


@pytest.mark.parametrize(("kind", "backward", "spatial"), gradcheck_cases(), ids=lambda v: str(v))
def test_gradcheck(kind, backward, spatial):
    assert gradcheck(kind, backward, spatial)


@pytest.mark.parametrize(("label", "value", "passed"), extra_checks(), ids=lambda v: str(v)[:40])
def test_accumulation_and_precise_statistics_rows(label, value, passed):
    assert passed, (label, value)


def test_manual_backward_saves_only_normalized_input_inv_std_and_weight():
    bn = BatchNorm(3, backward="manual")
    x = torch.randn(4, 3, 2, 2, requires_grad=True)
    y = bn(x)
    shapes = sorted(tuple(t.shape) for t in y.grad_fn.saved_tensors)
    assert shapes == [(1, 3, 1, 1), (3,), (4, 3, 2, 2)]


def _trained(module: nn.Module, shape=(8, 4, 3, 3), steps: int = 3) -> nn.Module:
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        module(torch.randn(shape, generator=gen) * 2 + 1)
    return module


def test_state_dict_round_trip_gives_identical_eval_outputs():
    model = build_model(ModelConfig(name="lenet", activation="sigmoid"), make_norm_factory(NormConfig(kind="scratch")))
    _trained(model, shape=(8, 1, 28, 28))
    keys = model.state_dict().keys()
    assert any(k.endswith("running_mean") for k in keys) and any(k.endswith("num_batches_tracked") for k in keys)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    fresh = build_model(ModelConfig(name="lenet", activation="sigmoid"), make_norm_factory(NormConfig(kind="scratch")))
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
    x = torch.rand(5, 1, 28, 28)
    model.eval(), fresh.eval()
    assert torch.equal(model(x), fresh(x))


def test_to_moves_and_casts_buffers():
    bn = _trained(BatchNorm(4)).to(torch.float64)
    assert bn.running_mean.dtype == bn.running_var.dtype == torch.float64
    assert bn.num_batches_tracked.dtype == torch.long
    meta = BatchNorm(4).to("meta")
    assert meta.running_mean.device.type == meta.running_var.device.type == "meta"


def test_statistics_update_under_no_grad_in_train_mode():
    ours, ref = BatchNorm(4), nn.BatchNorm2d(4)
    with torch.no_grad():
        _trained(ours), _trained(ref)
    assert int(ours.num_batches_tracked) == 3
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)


def test_eval_mode_comes_from_self_training_not_grad_mode():
    bn = _trained(BatchNorm(4)).eval()
    before = bn.running_mean.clone()
    x = torch.randn(8, 4, 3, 3) * 5
    y = bn(x)  # grad enabled, but eval mode: running statistics, no update
    assert torch.equal(bn.running_mean, before)
    expected = (x - before.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps)
    torch.testing.assert_close(y, expected)


def test_momentum_none_is_the_cumulative_average():
    bn = BatchNorm(3, momentum=None)
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(6, 3, generator=gen) * 2 + 1 for _ in range(5)]
    for x in batches:
        bn(x)
    torch.testing.assert_close(bn.running_mean, torch.stack([x.mean(0) for x in batches]).mean(0))
    torch.testing.assert_close(bn.running_var, torch.stack([x.var(0, unbiased=True) for x in batches]).mean(0))


def test_running_var_is_unbiased_and_initial_stats_are_zero_and_one():
    bn = BatchNorm(2, momentum=1.0)
    assert torch.equal(bn.running_mean, torch.zeros(2)) and torch.equal(bn.running_var, torch.ones(2))
    x = torch.randn(5, 2, 3, 3)
    bn(x)
    torch.testing.assert_close(bn.running_var, x.transpose(0, 1).reshape(2, -1).var(1, unbiased=True))


def test_4d_statistics_are_per_channel_not_per_pixel():
    """Per-pixel statistics (the tutorials' mistake) would leave each pixel's batch mean at zero;
    per-channel statistics leave only each channel's overall mean at zero."""
    x = torch.randn(8, 2, 3, 3) + torch.arange(9.0).view(1, 1, 3, 3)  # pixel-dependent means
    y = BatchNorm(2)(x)
    assert torch.allclose(y.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-5)
    assert not torch.allclose(y.mean(dim=0), torch.zeros(2, 3, 3), atol=1e-2)
    bn = BatchNorm(2)
    bn(x)
    assert bn.running_mean.shape == (2,)


def test_batch_stats_eval_leaves_running_statistics_untouched():
    for module in (BatchNorm(4), nn.BatchNorm2d(4)):
        _trained(module).eval()
        state = {k: v.clone() for k, v in module.state_dict().items()}
        x = torch.randn(8, 4, 3, 3) * 3
        with batch_stats_eval(module):
            y = module(x)
        assert not module.training and module.track_running_stats
        for key, value in module.state_dict().items():
            assert torch.equal(value, state[key]), key
        torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)


def test_ghost_batch_norm_is_batch_norm_per_virtual_batch_and_merges_a_trailing_one():
    x = torch.randn(9, 3) * 2 + 1
    ghost, ref = GhostBatchNorm(3, virtual_batch_size=4), nn.BatchNorm1d(3)
    expected = torch.cat([ref(x[:4]), ref(x[4:])])  # 4 + 5: the last example joins its neighbours
    torch.testing.assert_close(ghost(x), expected)
    torch.testing.assert_close(ghost.running_mean, ref.running_mean)
    assert int(ghost.num_batches_tracked) == 2


def test_batch_renorm_warm_up_starts_as_batch_norm_and_opens_to_the_limits():
    renorm, bn = BatchRenorm(3, rmax=2.0, dmax=1.0, warmup=4), BatchNorm(3)
    with torch.no_grad():  # running statistics far from the batch's: r and d want to be large
        renorm.running_var.fill_(100.0)
        renorm.running_mean.fill_(50.0)
    x = torch.randn(16, 3)
    torch.testing.assert_close(renorm(x), bn(x))  # step 0: rmax' = 1, dmax' = 0
    renorm.num_batches_tracked.fill_(4)  # warm-up over: the full limits
    with torch.no_grad():
        renorm.running_var.fill_(100.0)
        renorm.running_mean.fill_(50.0)
    x_hat = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + 1e-5)
    torch.testing.assert_close(renorm(x), x_hat * 0.5 - 1.0)  # r clipped at 1/rmax, d at -dmax


@pytest.mark.parametrize(("wanted", "channels", "groups"), [(32, 100, 25), (32, 6, 6), (32, 120, 30), (4, 7, 1)])
def test_group_count_is_the_largest_divisor_not_above_the_setting(wanted, channels, groups):
    assert group_count(wanted, channels) == groups


def test_precise_statistics_keep_weights_momentum_and_step_count():
    model = nn.Sequential(nn.Linear(4, 3), BatchNorm(3, momentum=0.3))
    _ = model(torch.randn(8, 4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.eval()
    precise_statistics(model, [torch.randn(8, 4) for _ in range(3)])
    after = model.state_dict()
    assert not model.training and model[1].momentum == 0.3
    assert torch.equal(after["1.num_batches_tracked"], before["1.num_batches_tracked"])
    assert torch.equal(after["0.weight"], before["0.weight"]) and torch.equal(after["1.weight"], before["1.weight"])
    assert not torch.equal(after["1.running_mean"], before["1.running_mean"])


def test_manual_normalize_saves_only_normalized_input_and_inv_std():
    y = LayerNorm((3, 2, 2), affine=False, backward="manual")(torch.randn(4, 3, 2, 2, requires_grad=True))
    assert sorted(tuple(t.shape) for t in y.grad_fn.saved_tensors) == [(4, 1, 1, 1), (4, 3, 2, 2)]
