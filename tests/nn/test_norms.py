"""bnbench's BatchNorm against nn.BatchNorm: the `bnbench check` grid, gradcheck, and the tutorial pitfalls."""

from __future__ import annotations

import copy
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
    GroupNorm,
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
    node = y.grad_fn  # the output is a copy of x̂ (an in-place op after the norm must not touch what is saved)
    while "NormalizeFn" not in type(node).__name__:
        node = node.next_functions[0][0]
    assert sorted(tuple(t.shape) for t in node.saved_tensors) == [(4, 1, 1, 1), (4, 3, 2, 2)]


# Issue 34: the manual backward composes with torch.func and double backward; torch's input checks;
# empty batches; old state dicts.


def _composable_modules() -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    return [
        (f"{name}-{backward}", build(backward), shape)
        for backward in ("autograd", "manual")
        for name, build, shape in (
            ("bn", lambda b: BatchNorm(3, backward=b), (4, 3, 2, 2)),
            ("bn-plain", lambda b: BatchNorm(3, affine=False, backward=b), (5, 3)),
            ("layer", lambda b: LayerNorm((3, 2), backward=b), (4, 3, 2)),
            ("group", lambda b: GroupNorm(2, 4, backward=b), (3, 4, 2)),
            ("ghost", lambda b: GhostBatchNorm(3, virtual_batch_size=3, backward=b), (6, 3)),
        )
    ]


@pytest.mark.parametrize(
    ("name", "module", "shape"), _composable_modules(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_batched_gradcheck_and_gradgradcheck(name, module, shape):
    module = module.double()
    gen = torch.Generator().manual_seed(5)
    params = {k: (v.detach() + torch.rand(v.shape, generator=gen, dtype=v.dtype)).requires_grad_()
              for k, v in module.named_parameters()}  # fmt: skip
    x = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)

    def forward(x: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(module, dict(zip(params, values, strict=True)), (x,))

    inputs = (x, *params.values())
    assert torch.autograd.gradcheck(forward, inputs, check_batched_grad=True)
    assert torch.autograd.gradgradcheck(forward, inputs, check_batched_grad=True)


@pytest.mark.parametrize("backward", ["autograd", "manual"])
def test_vmap_and_grad_over_the_module_match_a_loop_and_autograd(backward):
    gen = torch.Generator().manual_seed(6)
    xs = torch.randn(3, 6, 4, 2, 2, generator=gen, dtype=torch.float64)
    for module in (BatchNorm(4, track_running_stats=False, backward=backward), LayerNorm((4, 2, 2), backward=backward),
                   GroupNorm(2, 4, backward=backward), _trained(BatchNorm(4, backward=backward)).eval()):  # fmt: skip
        module = module.double()
        params = dict(module.named_parameters())
        batched = torch.func.vmap(lambda x: torch.func.functional_call(module, params, (x,)))(xs)  # noqa: B023
        torch.testing.assert_close(batched, torch.stack([module(x) for x in xs]))
    # grad of a training step, running statistics on: the same gradients as autograd's, statistics updated once
    ours, ref = BatchNorm(4, backward=backward).double(), nn.BatchNorm2d(4).double()
    params = {k: v.detach() for k, v in ours.named_parameters()}
    buffers = {k: v.clone() for k, v in ours.named_buffers()}  # mutated: inputs of the transformed function

    def loss(p: dict, b: dict) -> torch.Tensor:
        return torch.func.functional_call(ours, {**p, **b}, (xs[0],)).pow(3).sum()

    grads = torch.func.grad(loss)(params, buffers)
    ref(xs[0]).pow(3).sum().backward()
    torch.testing.assert_close(grads["weight"], ref.weight.grad)
    torch.testing.assert_close(grads["bias"], ref.bias.grad)
    torch.testing.assert_close(buffers["running_var"], ref.running_var)
    assert int(buffers["num_batches_tracked"]) == 1


def test_hessian_vector_product_of_the_manual_backward_equals_autograds():
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(5, 3, 2, 2, generator=gen, dtype=torch.float64)
    v = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    hvps = []
    for backward in ("autograd", "manual"):
        torch.manual_seed(0)
        module = BatchNorm(3, backward=backward).double()
        xr = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(module(xr).pow(3).sum(), xr, create_graph=True)
        hvps.append(torch.autograd.grad((g * v).sum(), xr)[0])
    torch.testing.assert_close(hvps[1], hvps[0])


def _raises_as_torch(ours, theirs, x: torch.Tensor) -> None:
    try:
        theirs(x)
    except Exception as expected:  # noqa: BLE001 - whatever torch raises, ours must raise the same
        with pytest.raises(type(expected)) as raised:
            ours(x)
        assert str(raised.value) == str(expected)
    else:
        raise AssertionError("torch accepted the input")


@pytest.mark.parametrize("backward", ["autograd", "manual"])
@pytest.mark.parametrize(
    ("ours", "theirs", "shape"),
    [
        (lambda b: BatchNorm(10, eps=0.0, backward=b), lambda: nn.BatchNorm1d(10, eps=0.0), (2, 10)),
        (lambda b: BatchNorm(10, eps=-1.0, backward=b), lambda: nn.BatchNorm2d(10, eps=-1.0), (2, 10, 5, 5)),
        (lambda b: BatchNorm(10, eps=-1.0, backward=b).eval(), lambda: nn.BatchNorm1d(10, eps=-1.0).eval(), (2, 10)),
        (lambda b: BatchNorm(10, backward=b), lambda: nn.BatchNorm1d(10), (1, 10)),
        (lambda b: BatchNorm(10, backward=b), lambda: nn.BatchNorm2d(10), (1, 10, 1, 1)),
        (
            lambda b: BatchNorm(10, track_running_stats=False, backward=b).eval(),
            lambda: nn.BatchNorm1d(10, track_running_stats=False).eval(),
            (1, 10),
        ),  # fmt: skip
        (lambda b: BatchNorm(3, backward=b), lambda: nn.BatchNorm1d(3), (4, 4)),
        (
            lambda b: BatchNorm(3, track_running_stats=False, backward=b),
            lambda: nn.BatchNorm1d(3, track_running_stats=False),
            (4, 4),
        ),  # fmt: skip
        (lambda b: GhostBatchNorm(10, backward=b), lambda: nn.BatchNorm1d(10), (1, 10)),
        (lambda b: BatchRenorm(10, eps=0.0), lambda: nn.BatchNorm1d(10, eps=0.0), (4, 10)),
        (lambda b: BatchRenorm(10), lambda: nn.BatchNorm1d(10), (1, 10)),
        (lambda b: LayerNorm((), backward=b), lambda: nn.LayerNorm(()), ()),
        (lambda b: LayerNorm(3, backward=b), lambda: nn.LayerNorm(3), (4, 4)),
        (lambda b: GroupNorm(10, 10, backward=b), lambda: nn.GroupNorm(10, 10), (1, 10, 1)),
        (lambda b: GroupNorm(10, 10, backward=b).eval(), lambda: nn.GroupNorm(10, 10).eval(), (1, 10)),
        (lambda b: GroupNorm(2, 4, backward=b), lambda: nn.GroupNorm(2, 4), (4, 6)),
        (lambda b: GroupNorm(2, 4, backward=b), lambda: nn.GroupNorm(2, 4), (4,)),
        (lambda b: GroupNorm(4, 4, affine=False, backward=b), lambda: nn.GroupNorm(4, 4, affine=False), (4, 6)),
    ],
    ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else "",
)
def test_input_checks_raise_torchs_exception_with_torchs_message(ours, theirs, shape, backward):
    x = torch.randn(shape) if shape else torch.tensor(1.0)
    _raises_as_torch(ours(backward), theirs(), x)


def test_group_norm_refuses_groups_that_do_not_divide_the_channels_as_torch():
    for groups, channels in ((3, 10), (5, 13)):
        with pytest.raises(
            ValueError, match=rf"num_channels \({channels}\) must be divisible by num_groups \({groups}\)"
        ):
            GroupNorm(groups, channels)


def _empty_batch_pairs(backward: str) -> list[tuple[nn.Module, nn.Module, tuple[int, ...]]]:
    torch_bn = nn.BatchNorm2d(5, 0.001, 0.3)
    return [
        (BatchNorm(5, 0.001, 0.3, backward=backward), torch_bn, (0, 5, 2, 2)),
        (BatchNorm(5, 0.001, None, affine=False, backward=backward), nn.BatchNorm1d(5, 0.001, None, False), (0, 5)),
        (GhostBatchNorm(5, 2, eps=0.001, momentum=0.3, backward=backward), nn.BatchNorm2d(5, 0.001, 0.3), (0, 5, 2, 2)),
        (BatchRenorm(5, eps=0.001, momentum=0.3), nn.BatchNorm2d(5, 0.001, 0.3), (0, 5, 2, 2)),
        (LayerNorm(5, 0.001, backward=backward), nn.LayerNorm(5, 0.001), (0, 5)),
        (GroupNorm(2, 4, backward=backward), nn.GroupNorm(2, 4), (0, 4)),
        (GroupNorm(2, 4, backward=backward), nn.GroupNorm(2, 4), (0, 4, 3, 3)),
    ]


@pytest.mark.parametrize("backward", ["autograd", "manual"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("index", range(7))
def test_empty_batch_as_torch_empty_output_zero_grads_statistics_unchanged(index, dtype, backward):
    ours, theirs, shape = _empty_batch_pairs(backward)[index]
    if isinstance(theirs, (nn.LayerNorm, nn.GroupNorm)):  # torch's refuse mixed dtypes: same dtype throughout
        ours, theirs = ours.to(dtype), theirs.to(dtype)
    for _ in range(2):
        outputs = []
        for module in (ours, theirs):
            x = torch.randn(shape, dtype=dtype, requires_grad=True)  # float64 into a float32 module too
            y = module(x)
            y.sum().backward()
            assert x.grad is not None and x.grad.shape == x.shape
            outputs.append(y)
        assert outputs[0].shape == outputs[1].shape and outputs[0].dtype == outputs[1].dtype
    for name, param in theirs.named_parameters():
        assert torch.equal(getattr(ours, name).grad, param.grad), name
    for name, buffer in theirs.named_buffers():
        assert torch.equal(getattr(ours, name), buffer), name


def test_old_state_dict_without_num_batches_tracked_loads_as_torchs():
    trained = _trained(BatchNorm(4))
    old = {k: v for k, v in trained.state_dict().items() if k != "num_batches_tracked"}
    for version in (None, 1):
        state = dict(old)
        metadata = {"": {} if version is None else {"version": version}}
        ours, theirs = BatchNorm(4), nn.BatchNorm2d(4)
        for module in (ours, theirs):
            sd = type(trained.state_dict())(state)
            sd._metadata = metadata
            module.load_state_dict(sd)
        assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked) == 0
        assert torch.equal(ours.running_var, trained.running_var)
    new = trained.state_dict()
    del new["num_batches_tracked"]
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        BatchNorm(4).load_state_dict(new)  # version 2 (ours now): the key is required, as torch's


def test_state_dicts_cross_load_between_torch_and_bnbench():
    ours, theirs = _trained(BatchNorm(4)), _trained(nn.BatchNorm2d(4))
    assert ours.state_dict()._metadata[""]["version"] == theirs.state_dict()._metadata[""]["version"] == 2
    fresh_ours, fresh_theirs = BatchNorm(4).eval(), nn.BatchNorm2d(4).eval()
    fresh_ours.load_state_dict(theirs.state_dict())
    fresh_theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 4, 2, 2)
    torch.testing.assert_close(fresh_ours(x), theirs.eval()(x))
    torch.testing.assert_close(fresh_theirs(x), ours.eval()(x))


def _low_precision_pairs(backward: str) -> list[tuple[nn.Module, nn.Module]]:
    return [
        (BatchNorm(6, backward=backward), nn.BatchNorm2d(6)),
        (LayerNorm((6, 4, 4), backward=backward), nn.LayerNorm((6, 4, 4))),
        (GroupNorm(3, 6, backward=backward), nn.GroupNorm(3, 6)),
    ]


@pytest.mark.parametrize("backward", ["autograd", "manual"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("mixed", [True, False], ids=["mixed", "cast"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("index", range(3), ids=["batch", "layer", "group"])
def test_low_precision_as_torch_float32_statistics_output_in_the_inputs_dtype(index, dtype, mixed, training, backward):
    """torch's low-precision behaviour: statistics in float32, output (and the input's gradient) in the input's
    dtype; in mixed mode (float32 parameters) the running statistics and the parameters' gradients stay float32.
    Both modules are measured against a float64 reference; bnbench's error is at most 2x torch's (plus half an
    output ulp, since both round their output to the low precision)."""
    ours, theirs = _low_precision_pairs(backward)[index]
    torch.manual_seed(0)
    with torch.no_grad():
        for p in theirs.parameters():
            p.uniform_(0.5, 1.5)
        if isinstance(theirs, nn.BatchNorm2d):
            theirs.running_mean.uniform_(-1, 1)
            theirs.running_var.uniform_(0.5, 2)
    ours.load_state_dict(theirs.state_dict())
    reference = copy.deepcopy(theirs).double()
    if not mixed:
        ours, theirs = ours.to(dtype), theirs.to(dtype)
    for module in (ours, theirs, reference):
        module.train(training)
    x = (torch.randn(8, 6, 4, 4) * 3 + 2).to(dtype)
    inputs = [x.clone().requires_grad_() for _ in range(3)]
    outputs = [ours(inputs[0]), theirs(inputs[1]), reference(inputs[2].double())]
    grad = torch.randn_like(outputs[2])
    for y in outputs:
        y.backward(grad.to(y.dtype))
    assert outputs[0].dtype == outputs[1].dtype == dtype
    assert inputs[0].grad.dtype == inputs[1].grad.dtype == dtype
    ulp = torch.finfo(dtype).eps * outputs[2].abs().max().item()
    for ours_t, theirs_t, exact in (
        (outputs[0], outputs[1], outputs[2]),
        (inputs[0].grad, inputs[1].grad, inputs[2].grad),
        *((getattr(ours, n).grad, p.grad, getattr(reference, n).grad) for n, p in theirs.named_parameters()),
    ):
        assert ours_t.dtype == theirs_t.dtype
        ours_error = (ours_t.double() - exact).abs().max().item()
        theirs_error = (theirs_t.double() - exact).abs().max().item()
        assert ours_error <= 2 * theirs_error + ulp, (ours_error, theirs_error)
    for name, buffer in theirs.named_buffers():
        ours_buffer = getattr(ours, name)
        assert ours_buffer.dtype == buffer.dtype == (torch.float32 if mixed else dtype) or name == "num_batches_tracked"
        if buffer.is_floating_point():
            ours_error = (ours_buffer.double() - getattr(reference, name)).abs().max().item()
            theirs_error = (buffer.double() - getattr(reference, name)).abs().max().item()
            assert ours_error <= 2 * theirs_error + torch.finfo(buffer.dtype).eps, (name, ours_error, theirs_error)


@pytest.mark.parametrize("module", [GhostBatchNorm(6, 4), BatchRenorm(6)], ids=["ghost", "renorm"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_ghost_and_renorm_in_low_precision_keep_float32_statistics(module, dtype):
    module = copy.deepcopy(module)
    exact = copy.deepcopy(module).double()
    x = torch.randn(12, 6, 3, 3).to(dtype)
    y, y_exact = module(x), exact(x.double())
    assert y.dtype == dtype and module.running_mean.dtype == module.running_var.dtype == torch.float32
    torch.testing.assert_close(y.double(), y_exact, atol=4 * torch.finfo(dtype).eps * 4, rtol=0)
    torch.testing.assert_close(module.running_var.double(), exact.running_var, atol=1e-6, rtol=1e-6)
    assert module.eval()(x).dtype == dtype


@pytest.mark.parametrize("backward", ["autograd", "manual"])
def test_group_norm_keeps_channels_last_as_torch(backward):
    x = torch.randn(4, 6, 3, 3).to(memory_format=torch.channels_last)
    ours, theirs = GroupNorm(3, 6, backward=backward), nn.GroupNorm(3, 6)
    y, expected = ours(x), theirs(x)
    channels_last = torch.channels_last
    assert y.is_contiguous(memory_format=channels_last) == expected.is_contiguous(memory_format=channels_last)
    assert y.is_contiguous(memory_format=channels_last) and not y.is_contiguous()
    torch.testing.assert_close(y, expected)
    assert BatchNorm(6, backward=backward)(x).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "make",
    [
        lambda backward: BatchNorm(3, affine=False, backward=backward),
        lambda backward: LayerNorm((3, 4, 4), affine=False, backward=backward),
        lambda backward: GroupNorm(1, 3, affine=False, backward=backward),
    ],
    ids=["bn", "ln", "gn"],
)
def test_an_in_place_op_after_a_norm_without_affine_keeps_the_backward_intact(make):
    """ReLU(inplace=True) after a norm with affine=False: the manual backward saves x̂, so the output must
    be another tensor (torch's norms allow this; it used to raise 'modified by an inplace operation')."""
    x = torch.randn(4, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    grads = []
    for backward in ("autograd", "manual"):
        x.grad = None
        torch.nn.functional.relu(make(backward)(x), inplace=True).square().sum().backward()
        grads.append(x.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-12)
