"""bnbench's norms on PyTorch's own test cases: the `ModuleInfo` entries of the installed torch's
`torch.testing._internal.common_modules.module_db` for nn.BatchNorm1d/2d, nn.LayerNorm and nn.GroupNorm
(the constructor arguments and forward inputs `test/test_modules.py` uses), each run against bnbench's
module built from the same arguments, with both backwards: forward, input and parameter gradients, running
statistics over two steps, in training and eval mode, float64; gradcheck with batched gradients and
gradgradcheck on the small ones; and torch's error inputs (type and message).

Out of scope, counted and asserted below: 3-D (N, C, L) BatchNorm inputs (bnbench's BatchNorm takes (N, C)
and (N, C, H, W), a clear ValueError otherwise) and `bias=False` (torch's newer option, not in bnbench's
norms); `device=`/`dtype=` constructor arguments would be too (torch's entries for these four use none)."""

from __future__ import annotations

import collections
import re

import pytest
import torch
from torch import nn

from bnbench.nn.norms import BatchNorm, GroupNorm, LayerNorm

pytest.importorskip("expecttest")  # torch.testing._internal needs it (the dev extra installs it)
from torch.testing._internal.common_modules import ModuleErrorEnum, module_db  # noqa: E402

TORCH_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)
BACKWARDS = ("autograd", "manual")
GRADCHECK_MAX_NUMEL = 48  # gradgradcheck's cost grows with the square of the input's size: the few small ones


def _out_of_scope(cls: type, args: tuple, kwargs: dict, x: torch.Tensor) -> str | None:
    if kwargs.get("bias") is False or (cls is nn.LayerNorm and len(args) > 3 and args[3] is False):
        return "bias=False"
    if "device" in kwargs or "dtype" in kwargs:
        return "device=/dtype= arguments"
    if cls in (nn.BatchNorm1d, nn.BatchNorm2d) and x.dim() not in (2, 4):
        return f"{x.dim()}-D BatchNorm input"
    return None


def _ours(cls: type, args: tuple, kwargs: dict, backward: str) -> nn.Module:
    """bnbench's module from torch's constructor arguments (positional as torch's signatures)."""
    if cls in (nn.BatchNorm1d, nn.BatchNorm2d):
        names = ("num_features", "eps", "momentum", "affine", "track_running_stats")
        return BatchNorm(**dict(zip(names, args, strict=False)), **kwargs, backward=backward)
    if cls is nn.LayerNorm:
        named = dict(zip(("shape", "eps", "affine"), args, strict=False))
        if "elementwise_affine" in kwargs:
            named["affine"] = kwargs.pop("elementwise_affine")
        kwargs.pop("bias", None)  # bias=True: bnbench's default
        return LayerNorm(**named, **kwargs, backward=backward)
    names = ("num_groups", "num_channels", "eps", "affine")
    return GroupNorm(**dict(zip(names, args, strict=False)), **kwargs, backward=backward)


def _samples() -> tuple[list, collections.Counter]:
    """(in-scope cases, Counter of skip reasons per sample); each case (id, cls, training, sample)."""
    cases, skipped = [], collections.Counter()
    for info in module_db:
        if info.module_cls not in TORCH_MODULES:
            continue
        for training in (True, False):
            inputs = info.module_inputs_func(info, device="cpu", dtype=torch.float64, requires_grad=True,
                                             training=training)  # fmt: skip
            for index, sample in enumerate(inputs):
                c, f = sample.constructor_input, sample.forward_input
                reason = _out_of_scope(info.module_cls, c.args, c.kwargs, f.args[0])
                if reason:
                    skipped[f"{info.module_cls.__name__}: {reason}"] += 1
                    continue
                mode = "train" if training else "eval"
                name = f"{info.module_cls.__name__}-{sample.desc or index}-{mode}"
                cases.append((name, info.module_cls, training, sample))
    return cases, skipped


CASES, SKIPPED = _samples()
# What this torch (2.14) declares, and which of it is out of scope; a new torch that adds cases changes
# these counts, and this test says so rather than silently testing less or more.
EXPECTED_SKIPPED = {
    "BatchNorm1d: 3-D BatchNorm input": 6,
    "BatchNorm1d: bias=False": 2,
    "BatchNorm2d: bias=False": 2,
    "GroupNorm: bias=False": 4,
    "LayerNorm: bias=False": 2,
}
EXPECTED_IN_SCOPE = 48


def test_the_cases_that_ran_and_the_cases_out_of_scope_are_the_expected_ones():
    print(f"\ntorch {torch.__version__}: {len(CASES)} in-scope samples x {len(BACKWARDS)} backwards; "
          f"skipped {sum(SKIPPED.values())}: {dict(SKIPPED)}")  # fmt: skip
    assert dict(SKIPPED) == EXPECTED_SKIPPED
    assert len(CASES) == EXPECTED_IN_SCOPE


def _pair(cls: type, sample, backward: str) -> tuple[nn.Module, nn.Module]:
    """torch's module and bnbench's, float64, with torch's parameters and running statistics randomized
    (so that gamma, beta and eval mode are exercised) and copied into bnbench's."""
    c = sample.constructor_input
    ref = cls(*c.args, **c.kwargs).double()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in ref.parameters():
            tensor.copy_(torch.rand(tensor.shape, generator=gen, dtype=tensor.dtype) + 0.5)
        if getattr(ref, "running_mean", None) is not None:
            ref.running_mean.copy_(torch.randn(ref.running_mean.shape, generator=gen, dtype=torch.float64))
            ref.running_var.copy_(torch.rand(ref.running_var.shape, generator=gen, dtype=torch.float64) + 0.5)
    ours = _ours(cls, c.args, dict(c.kwargs), backward).double()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize(("name", "cls", "training", "sample"), CASES, ids=[c[0] for c in CASES])
def test_forward_gradients_and_running_statistics_equal_torchs(name, cls, training, sample, backward):
    ref, ours = _pair(cls, sample, backward)
    ref.train(training)
    ours.train(training)
    x = sample.forward_input.args[0].detach()
    gen = torch.Generator().manual_seed(1)
    for step in range(2):
        inputs = x if step == 0 else torch.randn(x.shape, generator=gen, dtype=x.dtype) * 2 + 1
        dy = torch.randn(x.shape, generator=gen, dtype=x.dtype)
        results = []
        for module in (ref, ours):
            xr = inputs.clone().requires_grad_()
            y = module(xr)
            y.backward(dy)
            results.append((y, xr.grad))
        torch.testing.assert_close(results[1][0], results[0][0])
        torch.testing.assert_close(results[1][1], results[0][1])
        for key, param in ref.named_parameters():
            torch.testing.assert_close(getattr(ours, key).grad, param.grad, msg=key)
        for key, buffer in ref.named_buffers():
            torch.testing.assert_close(getattr(ours, key), buffer, msg=key)
        ref.zero_grad()
        ours.zero_grad()


SMALL = [c for c in CASES if c[2] and c[3].forward_input.args[0].numel() <= GRADCHECK_MAX_NUMEL]  # training mode


@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize(("name", "cls", "training", "sample"), SMALL, ids=[c[0] for c in SMALL])
def test_gradcheck_with_batched_grads_and_gradgradcheck(name, cls, training, sample, backward):
    _, ours = _pair(cls, sample, backward)
    ours.train(training)
    params = {k: v.detach().clone().requires_grad_() for k, v in ours.named_parameters()}
    x = sample.forward_input.args[0].detach().clone().requires_grad_()

    def forward(x: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(ours, dict(zip(params, values, strict=True)), (x,))

    inputs = (x, *params.values())
    assert torch.autograd.gradcheck(forward, inputs, check_batched_grad=True)
    assert torch.autograd.gradgradcheck(forward, inputs, check_batched_grad=True)


def _error_cases() -> list:
    cases = []
    for info in module_db:
        if info.module_cls in TORCH_MODULES and info.module_error_inputs_func is not None:
            errors = info.module_error_inputs_func(info, device="cpu", dtype=torch.float64, requires_grad=False,
                                                   training=True)  # fmt: skip
            for index, error in enumerate(errors):
                cases.append((f"{info.module_cls.__name__}-{index}", info.module_cls, error))
    return cases


ERROR_CASES = _error_cases()


def test_error_cases_are_the_expected_ones():
    assert len(ERROR_CASES) == 6  # BatchNorm1d/2d: eps -1 and 0; GroupNorm: channels not divisible, twice


@pytest.mark.parametrize("backward", BACKWARDS)
@pytest.mark.parametrize(("name", "cls", "error"), ERROR_CASES, ids=[c[0] for c in ERROR_CASES])
def test_error_inputs_raise_torchs_exception_and_message(name, cls, error, backward):
    sample = error.module_error_input
    c, f = sample.constructor_input, sample.forward_input
    with pytest.raises(error.error_type, match=error.error_regex):
        module = _ours(cls, c.args, dict(c.kwargs), backward)
        assert error.error_on == ModuleErrorEnum.FORWARD_ERROR, "constructed what torch refuses to construct"
        module(*f.args, **f.kwargs)
    if error.error_on == ModuleErrorEnum.FORWARD_ERROR:  # torch's message, word for word
        with pytest.raises(error.error_type) as ours_raised:
            _ours(cls, c.args, dict(c.kwargs), backward)(*f.args)
        with pytest.raises(error.error_type) as torch_raised:
            cls(*c.args, **c.kwargs)(*f.args)
        assert str(ours_raised.value) == str(torch_raised.value)
        assert re.search(error.error_regex, str(torch_raised.value))
