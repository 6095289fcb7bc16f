"""`bnbench check`: every hand-written norm against its reference, over a grid of cases, plus gradcheck.

References: nn.BatchNorm for `scratch`, nn.LayerNorm for `layer`, nn.GroupNorm for `group`;
where PyTorch has no counterpart, the definition: Ghost BN is nn.BatchNorm applied to each virtual
batch in turn, Batch Renormalization with rmax = 1, dmax = 0 is nn.BatchNorm, and with wider limits
it is the paper's formula written out below. The same grid drives tests/nn/test_norms.py, so the command
and the tests prove the same things.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import itertools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bnbench.config import NormConfig
from bnbench.nn.norms import NORMS, norm_builder, precise_statistics
from bnbench.training.train import accumulate_gradients

QUANTITIES = (
    "output",
    "grad_input",
    "grad_weight",
    "grad_bias",
    "running_mean",
    "running_var",
    "num_batches_tracked",
    "eval_output",
    "eval_grad_input",
    "state_dict",
)
SHORT_NAMES = dict(
    zip(
        QUANTITIES,
        ("y", "dx", "dweight", "dbias", "run_mean", "run_var", "n_batches", "eval y", "eval dx", "state_dict"),
        strict=True,
    )
)
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
SHAPES = ((2, 3), (7, 5), (2, 3, 4, 4), (5, 4, 3, 5))  # N=2 and odd sizes, 2-D and 4-D
# Virtual batches of 4 and 6: in float32, statistics of 2 values are too ill-conditioned for any
# implementation (nn.BatchNorm included) to agree with the exact result to 1e-5.
GHOST_SHAPES = ((12, 3), (16, 5), (8, 3, 4, 4), (6, 4, 3, 5))
GHOST_VIRTUAL_BATCHES = (4, 6, 100)  # 100: the whole batch, where Ghost BN is BatchNorm
TRAIN_STEPS = 3


class _PerVirtualBatch(nn.Module):
    """Ghost BN by its definition: one nn.BatchNorm applied to each virtual batch in turn."""

    def __init__(self, bn: nn.Module, virtual_batch_size: int) -> None:
        super().__init__()
        self.bn, self.size = bn, virtual_batch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.bn(x)
        return torch.cat([self.bn(chunk) for chunk in x.split(self.size)])


class _RenormByFormula(nn.BatchNorm1d):
    """Batch Renormalization as Ioffe (2017) writes it, with PyTorch's running-statistics convention;
    limits fully open (no warm-up). Works for 2-D and 4-D inputs."""

    def __init__(self, num_features: int, rmax: float, dmax: float, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.rmax, self.dmax = rmax, dmax

    def _check_input_dim(self, x: torch.Tensor) -> None:
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        mu = x.mean(dims, keepdim=True)
        sigma = torch.sqrt(x.var(dims, unbiased=False, keepdim=True) + self.eps)
        running_sigma = torch.sqrt(self.running_var + self.eps).view(shape)
        r = (sigma.detach() / running_sigma).clamp(1 / self.rmax, self.rmax)
        d = ((mu.detach() - self.running_mean.view(shape)) / running_sigma).clamp(-self.dmax, self.dmax)
        y = (x - mu) / sigma * r + d
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        with torch.no_grad():
            self.num_batches_tracked += 1
            self.running_mean.lerp_(mu.flatten(), self.momentum)
            self.running_var.lerp_(x.var(dims, unbiased=True), self.momentum)
        return y


@dataclass(frozen=True)
class Case:
    kind: str  # the registered kind whose reference this case uses
    shape: tuple[int, ...]
    norm: NormConfig
    ours: str | None = None  # a plugin norm checked against that reference (`check --norm`); None: `kind`

    @property
    def family(self) -> str:
        """Cases of one family share a row in the summary table."""
        if self.kind == "renorm":
            return (
                "renorm rmax=1 dmax=0"
                if self.norm.rmax == 1
                else f"renorm rmax={self.norm.rmax:g} dmax={self.norm.dmax:g}"
            )
        return f"{self.ours} ({self.norm.backward})" if self.ours else f"{self.kind} ({self.norm.backward})"

    @property
    def reference(self) -> str:
        if self.kind == "renorm" and self.norm.rmax != 1:
            return "the paper's formula"
        return REFERENCE_NAMES[self.kind]

    @property
    def name(self) -> str:
        n = self.norm
        stats = ("cma" if n.momentum is None else f"m{n.momentum:g}") if n.track_running_stats else "no-stats"
        stats = "" if self.kind in ("layer", "group") else f" {stats}"
        extra = {"group": f" g{n.groups}", "ghost": f" vb{n.virtual_batch_size}"}.get(self.kind, "")
        if self.kind == "renorm":
            extra = f" rmax{n.rmax:g} dmax{n.dmax:g}"
        affine = "affine" if n.affine else "plain"
        return f"{self.kind} {'x'.join(map(str, self.shape))} {affine}{stats}{extra} {n.backward}"


REFERENCE_NAMES = {
    "scratch": "nn.BatchNorm",
    "layer": "nn.LayerNorm",
    "group": "nn.GroupNorm",
    "ghost": "nn.BatchNorm per virtual batch",
    "renorm": "nn.BatchNorm",
}


def _bn_cases(kind: str, shapes: tuple, backwards: tuple[str, ...], **norm: object) -> list[Case]:
    grid = []
    for shape, affine, backward in itertools.product(shapes, (True, False), backwards):
        base = NormConfig(kind=kind, affine=affine, backward=backward, **norm)
        grid += [Case(kind, shape, dataclasses.replace(base, momentum=m)) for m in (0.1, 0.5, None)]
        grid.append(Case(kind, shape, dataclasses.replace(base, track_running_stats=False)))
    return grid


def cases() -> list[Case]:
    grid = _bn_cases("scratch", SHAPES, ("autograd", "manual"))
    for backward, shape, affine in itertools.product(("autograd", "manual"), SHAPES, (True, False)):
        grid.append(Case("layer", shape, NormConfig(kind="layer", affine=affine, backward=backward)))
    for backward, shape, affine in itertools.product(("autograd", "manual"), SHAPES, (True, False)):
        # 1 group: LayerNorm with per-channel affine; C groups (4-D only): InstanceNorm
        for groups in sorted({1, 2 if shape[1] % 2 == 0 else 1, shape[1] if len(shape) == 4 else 1}):
            norm = NormConfig(kind="group", affine=affine, backward=backward, groups=groups)
            grid.append(Case("group", shape, norm))
    for virtual in GHOST_VIRTUAL_BATCHES:
        grid += _bn_cases("ghost", GHOST_SHAPES, ("autograd", "manual"), virtual_batch_size=virtual)
    grid += _bn_cases("renorm", SHAPES, ("autograd",), rmax=1.0, dmax=0.0, renorm_warmup=0)
    wide = _bn_cases("renorm", SHAPES, ("autograd",), rmax=1.5, dmax=0.5, renorm_warmup=0)
    grid += [c for c in wide if c.norm.track_running_stats and c.norm.momentum is not None]
    return grid


def reference(case: Case) -> nn.Module:
    n, channels, features = case.norm, case.shape[1], case.shape[1:]
    bn_options = dict(eps=n.eps, momentum=n.momentum, affine=n.affine, track_running_stats=n.track_running_stats)
    batch_norm = (nn.BatchNorm2d if len(case.shape) == 4 else nn.BatchNorm1d)(channels, **bn_options)
    if case.kind == "layer":
        return nn.LayerNorm(features, eps=n.eps, elementwise_affine=n.affine)
    if case.kind == "group":
        return nn.GroupNorm(n.groups, channels, eps=n.eps, affine=n.affine)
    if case.kind == "ghost":
        return _PerVirtualBatch(batch_norm, n.virtual_batch_size)
    if case.kind == "renorm" and n.rmax != 1:
        return _RenormByFormula(channels, n.rmax, n.dmax, **bn_options)
    return batch_norm


def _state_of(module: nn.Module) -> dict[str, torch.Tensor]:
    """State-dict entries without the wrapper prefix of `_PerVirtualBatch`."""
    return {k.removeprefix("bn."): v for k, v in module.state_dict().items()}


def compare_case(case: Case, dtype: torch.dtype = torch.float64, device: str = "cpu") -> dict[str, float]:
    """Max abs difference per quantity over TRAIN_STEPS training steps, then one eval step, then the
    eval output of a fresh reference that loaded our state_dict (inf when the keys do not match)."""
    gen = torch.Generator().manual_seed(0)
    ref = reference(case)
    ours = norm_builder(case.ours or case.kind)(case.norm, case.shape[1:])
    with torch.no_grad():
        for name, param in ref.named_parameters():
            param.copy_(torch.rand(param.shape, generator=gen) + 0.5 if name.endswith("weight") else
                        torch.randn(param.shape, generator=gen))  # fmt: skip
    ours.load_state_dict(_state_of(ref))
    ref.to(device, dtype)
    ours.to(device, dtype)
    diffs = dict.fromkeys(QUANTITIES, 0.0)

    def note(key: str, a: torch.Tensor | None, b: torch.Tensor | None) -> None:
        if a is not None and b is not None:
            diffs[key] = max(diffs[key], (a.double() - b.double()).abs().max().item())

    def step(prefix: str, x: torch.Tensor, dy: torch.Tensor) -> None:
        x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_ref, y_ours = ref(x_ref), ours(x_ours)
        y_ref.backward(dy)
        y_ours.backward(dy)
        note(f"{prefix}output", y_ref, y_ours)
        note(f"{prefix}grad_input", x_ref.grad, x_ours.grad)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        # Shifted, scaled inputs: a mean far from 0 is where careless variance formulas lose accuracy.
        x = (torch.randn(case.shape, generator=gen) * 3 + 2).to(device, dtype)
        return x, torch.randn(case.shape, generator=gen).to(device, dtype)

    ref_state, our_state = _state_of(ref), ours.state_dict()
    for _ in range(TRAIN_STEPS):
        step("", *batch())
        for name in ("weight", "bias"):
            note(f"grad_{name}", *(getattr(m, name).grad if getattr(m, name, None) is not None else None
                                   for m in (getattr(ref, "bn", ref), ours)))  # fmt: skip
        ref.zero_grad()
        ours.zero_grad()
        for buffer in ("running_mean", "running_var", "num_batches_tracked"):
            note(buffer, ref_state.get(buffer), our_state.get(buffer))
    ref.eval()
    ours.eval()
    x, dy = batch()
    step("eval_", x, dy)
    fresh = reference(case).to(device, dtype).eval()
    buffer = io.BytesIO()
    torch.save(ours.state_dict(), buffer)
    saved = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    prefix = "bn." if isinstance(fresh, _PerVirtualBatch) else ""
    try:
        fresh.load_state_dict({prefix + k: v for k, v in saved.items()})
        with torch.no_grad():
            note("state_dict", fresh(x), ours(x))
    except RuntimeError:
        diffs["state_dict"] = float("inf")
    return diffs


def gradcheck(kind: str, backward: str, spatial: bool, device: str = "cpu") -> bool:
    """torch.autograd.gradcheck in float64 of the training-mode forward w.r.t. input, weight, bias.
    Renorm is checked at rmax = 1, dmax = 0: its r and d are constants to the gradient by definition,
    which a numerical derivative cannot see."""
    shape = (4, 4, 2, 3) if spatial else (5, 4)
    norm = NormConfig(kind=kind, backward=backward, groups=2, virtual_batch_size=2, rmax=1.0, dmax=0.0)
    module = NORMS[kind](norm, shape[1:]).to(device, torch.float64)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    w = (torch.rand(module.weight.shape, generator=gen, dtype=torch.float64) + 0.5).to(device).requires_grad_()
    b = torch.randn(module.bias.shape, generator=gen, dtype=torch.float64).to(device).requires_grad_()

    def forward(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(module, {"weight": w, "bias": b}, (x,))

    return torch.autograd.gradcheck(forward, (x, w, b), eps=1e-6, atol=1e-7)


# `check --norm SPEC --reference R`: R's registered kind, whose reference and cases a plugin norm gets.
PLUGIN_REFERENCES = {"torch": "scratch", "layer": "layer", "group": "group"}


def plugin_cases(spec: str, reference_name: str) -> list[Case]:
    """The cases of the reference's family (autograd only: a plugin has one backward), for `spec`."""
    kind = PLUGIN_REFERENCES[reference_name]
    family = [c for c in cases() if c.kind == kind and c.norm.backward == "autograd"]
    return [dataclasses.replace(c, ours=spec) for c in family]


def contract_checks(spec: str, dtype: torch.dtype = torch.float64, device: str = "cpu") -> list[tuple[str, bool]]:
    """What any norm must do, without a reference: keep the shape (train and eval, (N,C) and (N,C,H,W)),
    give a finite output, survive a state_dict round trip into a fresh instance, and have gradients that
    match finite differences (gradcheck, float64)."""
    build = norm_builder(spec)
    rows: list[tuple[str, bool]] = []
    gen = torch.Generator().manual_seed(4)
    for shape in ((8, 4), (6, 3, 4, 4)):
        cfg = NormConfig(kind="none")  # the plugin reads eps, momentum, affine, ... from it
        label = "x".join(map(str, shape))
        try:
            module = build(cfg, shape[1:]).to(device, dtype)
            x = (torch.randn(shape, generator=gen) * 3 + 2).to(device, dtype)
            module.train()
            train_y = module(x)
            module.eval()
            eval_y = module(x)
            rows.append((f"{label}: output shape and finite values, train and eval",
                         train_y.shape == x.shape == eval_y.shape and bool(train_y.isfinite().all())))  # fmt: skip
            fresh = build(cfg, shape[1:]).to(device, dtype)
            buffer = io.BytesIO()
            torch.save(module.state_dict(), buffer)
            fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
            fresh.eval()
            rows.append((f"{label}: state_dict round trip, same eval output", bool(torch.equal(fresh(x), eval_y))))
            module64 = build(cfg, shape[1:]).to(device, torch.float64).train()
            x64 = torch.randn(shape, generator=gen, dtype=torch.float64).to(device).requires_grad_()
            ok = torch.autograd.gradcheck(module64, (x64,), eps=1e-6, atol=1e-7)
            rows.append((f"{label}: gradcheck float64 (input)", bool(ok)))
        except Exception as exc:  # noqa: BLE001 - a contract failure of a user's norm is a failed row
            rows.append((f"{label}: {type(exc).__name__}: {str(exc)[:80]}", False))
    return rows


def gradcheck_cases() -> list[tuple[str, str, bool]]:
    kinds = [("scratch", b) for b in ("autograd", "manual")] + [("layer", b) for b in ("autograd", "manual")]
    kinds += [("group", b) for b in ("autograd", "manual")] + [("ghost", b) for b in ("autograd", "manual")]
    kinds += [("renorm", "autograd")]
    return [(kind, backward, spatial) for kind, backward in kinds for spatial in (False, True)]


def accumulation_difference(kind: str, micro_batches: int = 4, batch: int = 64) -> float:
    """Max abs difference between the parameter gradients of one batch and of the same batch as
    `micro_batches` accumulated micro-batches, through train.accumulate_gradients, float64."""
    from bnbench.config import ModelConfig
    from bnbench.nn.models import build_model
    from bnbench.nn.norms import make_norm_factory

    gen = torch.Generator().manual_seed(2)
    x = torch.rand(batch, 1, 28, 28, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 10, (batch,), generator=gen)
    grads = []
    for k in (1, micro_batches):
        torch.manual_seed(0)
        model = build_model(ModelConfig(name="mlp", activation="sigmoid", hidden=(32,)),
                            make_norm_factory(NormConfig(kind=kind))).double()  # fmt: skip
        accumulate_gradients(model, x, y, k)
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    return (grads[0] - grads[1]).abs().max().item()


def precise_statistics_difference(kind: str, batches: int = 5) -> float:
    """Max abs difference between the running statistics `precise_statistics` leaves and the plain
    average of each batch's mean and unbiased variance, computed here by hand; float64."""
    gen = torch.Generator().manual_seed(3)
    data = [torch.randn(6, 3, 2, 2, generator=gen, dtype=torch.float64) * 2 + 1 for _ in range(batches)]
    module = NORMS[kind](NormConfig(kind=kind, momentum=0.1), (3, 2, 2)).double()
    module(torch.randn(6, 3, 2, 2, dtype=torch.float64))  # some moving-average state to be replaced
    precise_statistics(module, data)
    means = torch.stack([x.mean((0, 2, 3)) for x in data]).mean(0)
    variances = torch.stack([x.transpose(0, 1).reshape(3, -1).var(1) for x in data]).mean(0)
    return max((module.running_mean - means).abs().max().item(), (module.running_var - variances).abs().max().item())


def extra_checks() -> list[tuple[str, float, bool]]:
    """(row, value, passed) for gradient accumulation and precise statistics."""
    rows = []
    none = accumulation_difference("none")
    rows.append(("accumulate 4 x 16 = batch 64, norm none: max |grad diff|", none, none <= TOLERANCE[torch.float64]))
    bn = accumulation_difference("scratch")
    rows.append(("accumulate 4 x 16 vs batch 64, norm scratch: differs (BN sees micro-batches)", bn, bn > 1e-6))
    for kind in ("scratch", "torch", "renorm"):
        diff = precise_statistics_difference(kind)
        rows.append((f"precise_bn, {kind}: running stats = average of batch stats", diff, diff <= 1e-12))
    return rows


# ---- What PyTorch's own tests of nn.BatchNorm, nn.LayerNorm and nn.GroupNorm ask (test_modules.py's
# ModuleInfo checks, test_nn.py, test_load_state_dict.py), one row per family. With a reference kind,
# torch's module built from the same arguments is the oracle; without one (a plugin's contract), the
# families that need no oracle.
TORCH_FAMILIES = (
    "batched gradients and vmap",
    "second derivatives",
    "input checks",
    "empty batch",
    "state dicts",
    "low precision",
    "channels_last",
)
NEEDS_TORCH = ("input checks", "channels_last")
_SMALL = ((6, 4), (4, 4, 2, 2))  # Ghost BN's virtual batches of 2: three and two of them


class _Failed(Exception):
    """A family's check did not hold; the message says what."""


def _expect(ok: bool, what: str) -> None:
    if not ok:
        raise _Failed(what)


def _label(shape: tuple[int, ...]) -> str:
    return "(" + ",".join(map(str, shape)) + ")"


def _data(shape: tuple[int, ...], seed: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Inputs of mean 2 and std 3, as in the grid."""
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 3 + 2).to(dtype)


def family_config(kind: str, backward: str = "autograd") -> NormConfig:
    """The small configuration the families use: 2 groups, virtual batches of 2, renorm at rmax 1, dmax 0
    (where it is nn.BatchNorm)."""
    return NormConfig(kind=kind, backward=backward, groups=2, virtual_batch_size=2, rmax=1.0, dmax=0.0,
                      renorm_warmup=0)  # fmt: skip


def _torch_twin(kind: str, cfg: NormConfig, shape: tuple[int, ...], ours: nn.Module | None = None) -> nn.Module:
    """torch's module for `kind` with random parameters (seeded), float64; `ours`, if given, loads its state."""
    twin = reference(Case(kind, shape, cfg)).double()
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in twin.named_parameters():
            param.copy_(torch.rand(param.shape, generator=gen) + 0.5 if name.endswith("weight") else
                        torch.randn(param.shape, generator=gen))  # fmt: skip
    if ours is not None:
        ours.load_state_dict(_state_of(twin))
    return twin


def _as_function(module: nn.Module, x: torch.Tensor) -> tuple[Callable, tuple[torch.Tensor, ...]]:
    """The module as a function of its input and parameters (for gradcheck), and those arguments."""
    names = [name for name, _ in module.named_parameters()]

    def forward(x: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(module, dict(zip(names, params, strict=True)), (x,))

    return forward, (x.requires_grad_(), *(p.detach().clone().requires_grad_() for p in module.parameters()))


def _batched_and_vmap(build: Callable, cfg: NormConfig, kind: str | None):
    for shape in _SMALL:
        yield f"{_label(shape)} gradcheck(check_batched_grad=True)"
        module = build(cfg, shape[1:]).double().train()
        forward, inputs = _as_function(module, _data(shape, 7))
        _expect(
            torch.autograd.gradcheck(
                forward, inputs, eps=1e-6, atol=1e-7, check_batched_grad=True, raise_exception=False
            ),
            "gradients differ from finite differences",
        )
        xs = torch.stack([_data(shape, seed) for seed in (8, 9, 10)])
        plain = build(dataclasses.replace(cfg, track_running_stats=False), shape[1:]).double().train()
        trained = build(cfg, shape[1:]).double().train()
        trained(_data(shape, 11))
        for mode, m in (("training, no running statistics", plain), ("eval", trained.eval())):
            yield f"{_label(shape)} torch.func.vmap over 3 inputs, {mode}"
            params = dict(m.named_parameters())
            batched = torch.func.vmap(lambda x, m=m, params=params: torch.func.functional_call(m, params, (x,)))(xs)
            looped = torch.stack([m(x) for x in xs])
            _expect(torch.allclose(batched, looped, rtol=1e-10, atol=1e-10), "differs from a loop over the inputs")


def _second_derivatives(build: Callable, cfg: NormConfig, kind: str | None):
    for shape in _SMALL:
        yield f"{_label(shape)} gradgradcheck"
        module = build(cfg, shape[1:]).double().train()
        forward, inputs = _as_function(module, _data(shape, 12))
        _expect(torch.autograd.gradgradcheck(forward, inputs, eps=1e-6, atol=1e-5, raise_exception=False),
                "second derivatives differ from finite differences")  # fmt: skip


def _outcome(make: Callable[[], nn.Module], x: torch.Tensor) -> type[BaseException] | None:
    """The exception type building the module in training mode and calling it on x raises, None if none."""
    try:
        make().double().train()(x)
    except Exception as exc:  # noqa: BLE001 - the type is the answer
        return type(exc)
    return None


def _error_cases(build: Callable, cfg: NormConfig, kind: str | None):
    """Where torch's module raises, ours raises the same exception type (in building or in forward)."""
    cases = [
        ("eps=0", dataclasses.replace(cfg, eps=0.0), (4,), (3, 4)),
        ("eps=-1", dataclasses.replace(cfg, eps=-1.0), (4,), (3, 4)),
        ("one value per channel (1,2)", cfg, (2,), (1, 2)),
        ("one value per channel (1,2,1,1)", cfg, (2, 1, 1), (1, 2, 1, 1)),
        ("5 channels into a norm of 4", cfg, (4,), (3, 5)),
    ]
    for name, case_cfg, features, shape in cases:
        yield name
        x = _data(shape, 13)
        theirs = _outcome(lambda c=case_cfg, f=features: reference(Case(kind, (1, *f), c)), x)
        ours = _outcome(lambda c=case_cfg, f=features: build(c, f), x)
        if theirs is not None:
            got = "returns a tensor" if ours is None else f"raises {ours.__name__}"
            _expect(ours is not None and issubclass(ours, theirs), f"torch raises {theirs.__name__}, this {got}")


def _empty_batch(build: Callable, cfg: NormConfig, kind: str | None):
    for shape in ((0, 4), (0, 4, 2, 2)):
        yield f"{_label(shape)} in training"
        module = build(cfg, shape[1:]).double().train()
        module(_data((6, *shape[1:]), 14))
        before = {name: b.clone() for name, b in module.named_buffers()}
        x = torch.zeros(shape, dtype=torch.float64, requires_grad=True)
        y = module(x)
        _expect(y.shape == x.shape, f"output shape {tuple(y.shape)}")
        if y.requires_grad:
            y.sum().backward()
        for name, param in module.named_parameters():
            _expect(param.grad is None or not param.grad.any(), f"{name}.grad is not zero")
        for name, buffer in module.named_buffers():
            if name != "num_batches_tracked":
                _expect(torch.equal(buffer, before[name]), f"{name} changed")
        if kind is not None and "num_batches_tracked" in before:
            twin = _torch_twin(kind, cfg, (6, *shape[1:])).train()
            twin(_data((6, *shape[1:]), 14))
            twin(x)
            count = int(_state_of(twin)["num_batches_tracked"])
            _expect(int(module.num_batches_tracked) == count, f"num_batches_tracked {int(module.num_batches_tracked)}, "
                    f"torch counts {count}")  # fmt: skip


def _state_dicts(build: Callable, cfg: NormConfig, kind: str | None):
    shape = (4, 4, 2, 2)
    module = build(cfg, shape[1:]).double().train()
    for seed in (15, 16):
        module(_data(shape, seed))
    module.eval()
    x = _data(shape, 17)
    yield "saved and loaded into a fresh instance"
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    fresh = build(cfg, shape[1:]).double().eval()
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    _expect(torch.equal(fresh(x), module(x)), "a different eval output")
    state = module.state_dict()
    if "num_batches_tracked" in state:
        yield "an old state dict (version 1, no num_batches_tracked)"
        old = type(state)((k, v) for k, v in state.items() if k != "num_batches_tracked")
        old._metadata = {k: {**v, "version": 1} for k, v in state._metadata.items()}  # type: ignore[attr-defined]
        fresh = build(cfg, shape[1:]).double()
        fresh.load_state_dict(old)  # as nn.BatchNorm: the fresh module's counter (0) is kept
        _expect(int(fresh.num_batches_tracked) == 0, f"num_batches_tracked {int(fresh.num_batches_tracked)}, not 0")
    if kind is not None:
        yield "torch's module loads it"
        twin = _torch_twin(kind, cfg, shape).eval()
        getattr(twin, "bn", twin).load_state_dict(state)
        _expect(torch.allclose(twin(x), module(x), rtol=0, atol=1e-10), "torch's eval output differs")
        yield "it loads torch's"
        twin = _torch_twin(kind, cfg, shape).train()
        twin(_data(shape, 19))
        twin.eval()
        fresh = build(cfg, shape[1:]).double().eval()
        fresh.load_state_dict(_state_of(twin))
        _expect(torch.allclose(twin(x), fresh(x), rtol=0, atol=1e-10), "a different eval output from torch's")


def _low_precision(build: Callable, cfg: NormConfig, kind: str | None):
    """float16/bfloat16 inputs, into float32 modules (torch's mixed mode) and into modules cast to them:
    output and input gradient in the input's dtype; with a reference, the output's and the running statistics'
    largest error against a float64 reference within 2x torch's own (+1e-6)."""
    shape = (8, 4, 3, 3)
    for dtype, mode in itertools.product((torch.float16, torch.bfloat16), ("float32 module", "module cast")):
        yield f"{str(dtype).removeprefix('torch.')} input, {mode}"
        ours = build(cfg, shape[1:]).float().train()
        twin = _torch_twin(kind, cfg, shape, ours).float().train() if kind is not None else None
        exact = copy.deepcopy(twin).double() if twin is not None else None
        if mode == "module cast":
            ours.to(dtype)
            twin = twin.to(dtype) if twin is not None else None
        x = _data(shape, 20, dtype).requires_grad_()
        y = ours(x)
        y.backward(torch.ones_like(y))
        _expect(y.dtype == dtype and x.grad is not None and x.grad.dtype == dtype,
                f"output {y.dtype}, input gradient {None if x.grad is None else x.grad.dtype}")  # fmt: skip
        _expect(bool(y.isfinite().all()), "a non-finite output")
        if twin is None or exact is None:
            continue
        truth = exact(x.detach().double())
        pairs = [("output", y, twin(x.detach()), truth)]
        for name in ("running_mean", "running_var"):
            if name in _state_of(exact):
                pairs.append((name, ours.state_dict()[name], _state_of(twin)[name], _state_of(exact)[name]))
        for name, mine, theirs, true in pairs:
            error, torch_error = ((t.double() - true).abs().max().item() for t in (mine, theirs))
            _expect(error <= 2 * torch_error + 1e-6, f"{name} off by {error:.1e}, torch's by {torch_error:.1e}")


def _channels_last(build: Callable, cfg: NormConfig, kind: str | None):
    shape = (4, 4, 3, 3)
    ours = build(cfg, shape[1:]).double()
    twin = _torch_twin(kind, cfg, shape, ours)
    x = _data(shape, 21).contiguous(memory_format=torch.channels_last)
    for mode in ("training", "eval"):
        yield f"{_label(shape)} channels_last, {mode}"
        ours.train(mode == "training")
        twin.train(mode == "training")
        y, theirs = ours(x), twin(x)
        _expect(torch.allclose(y, theirs, rtol=0, atol=1e-10), "a different output from torch's")
        kept = theirs.is_contiguous(memory_format=torch.channels_last)
        _expect(not kept or y.is_contiguous(memory_format=torch.channels_last), "torch keeps channels_last, this not")


_FAMILY_CHECKS = dict(
    zip(
        TORCH_FAMILIES,
        (_batched_and_vmap, _second_derivatives, _error_cases, _empty_batch, _state_dicts, _low_precision,
         _channels_last),
        strict=True,
    )
)  # fmt: skip


def torch_test_families(spec: str, kind: str | None, backward: str = "autograd") -> list[tuple[str, str | None]]:
    """(family, None when it passes or else the failing case and what failed) for the norm `spec` (a
    registered kind or module:attribute) held to what PyTorch's tests ask of torch's module for `kind`
    (scratch, ghost, renorm: nn.BatchNorm; layer; group); kind None: the families that need no oracle."""
    build = norm_builder(spec)
    cfg = family_config(kind or "none", backward)
    rows: list[tuple[str, str | None]] = []
    for family, check in _FAMILY_CHECKS.items():
        if kind is None and family in NEEDS_TORCH:
            continue
        case, failure = "", None
        try:
            with warnings.catch_warnings():  # edge cases by design: var() of an empty batch warns
                warnings.simplefilter("ignore")
                for case in check(build, cfg, kind):  # noqa: B007 - the last case named is the failing one
                    pass
        except _Failed as exc:
            failure = f"{case}: {exc}"
        except Exception as exc:  # noqa: BLE001 - a user's norm that raises fails its row, named
            failure = f"{case}: {type(exc).__name__}: {' '.join(str(exc).split())[:120]}"
        rows.append((family, failure))
    return rows


def family_variants() -> list[tuple[str, str, str]]:
    """The built-in norms the families run on: (kind, its reference kind, backward)."""
    pairs = [(k, b) for k in ("scratch", "layer", "group", "ghost") for b in ("autograd", "manual")]
    return [(kind, kind, backward) for kind, backward in [*pairs, ("renorm", "autograd")]]


def family_lines(rows: list[tuple[str, str | None]], norm: str | None = None) -> list:
    """Rich lines for torch_test_families' rows: one per family, or with `norm`, one for that norm's
    families (its failures named)."""
    from rich.text import Text

    if norm is None:
        return [Text.assemble(f"torch's tests, {family}: ", ("pass", "green") if failure is None else ("FAIL", "red"),
                              "" if failure is None else f" ({failure})") for family, failure in rows]  # fmt: skip
    failed = [(family, failure) for family, failure in rows if failure is not None]
    if not failed:
        return [Text.assemble(f"torch's tests, {norm}: {len(rows)} of {len(rows)} families ", ("pass", "green"))]
    named = "; ".join(f"{family} ({failure})" for family, failure in failed)
    return [Text.assemble(f"torch's tests, {norm}: ", ("FAIL", "red"), f" {named}")]


# The summary table's columns: each the worst of these quantities.
SUMMARY_COLUMNS = {
    "outputs": ("output", "eval_output"),
    "gradients": ("grad_input", "grad_weight", "grad_bias", "eval_grad_input"),
    "running stats": ("running_mean", "running_var", "num_batches_tracked"),
    "state_dict": ("state_dict",),
}


def run_contract_check(spec: str, dtype: torch.dtype, device: str, width: int | None = None) -> tuple[list, int]:
    """`check --norm SPEC` without a reference: the contract rows alone."""
    from rich.text import Text

    from bnbench.evidence.tables import fitted

    rows = contract_checks(spec, dtype, device)
    families = torch_test_families(spec, None)
    failures = sum(not ok for _, ok in rows) + sum(failure is not None for _, failure in families)
    table = fitted(f"{spec}: the norm contract on {device} (no reference; --reference torch|layer|group compares)",
                   ["check", "result"], [[label, "pass" if ok else "FAIL"] for label, ok in rows], width)  # fmt: skip
    units = len(rows) + len(families)
    return [table, *family_lines(families), Text(f"{units - failures} passed, {failures} failed")], failures


def run_check(
    dtype: torch.dtype,
    device: str,
    every_case: bool = False,
    width: int | None = None,
    wide: bool = False,
    plugin: tuple[str, str] | None = None,
    on_case: Callable[[int, int, str], None] | None = None,
) -> tuple[list, int]:
    """The whole check as Rich renderables and the number of failed rows: one row per family of cases
    (the worst difference over the family), or, with `every_case`, one row per case and quantity. With
    `plugin` (spec, reference), that norm's cases against the reference, and its contract rows.
    `on_case(done, total, name)` is told before each case (a progress bar)."""
    from rich.text import Text

    from bnbench.evidence.tables import fitted

    tolerance = TOLERANCE[dtype]
    columns = {SHORT_NAMES[q]: (q,) for q in QUANTITIES} if every_case else SUMMARY_COLUMNS
    title = (f"hand-written norms vs their references on {device}, {str(dtype).removeprefix('torch.')}: "
             f"max abs difference (tolerance {tolerance:g}; '-': the norm has no such quantity)")  # fmt: skip
    # The result comes right after the case: on a narrow terminal the figures are dropped first.
    header = ["case" if every_case else "norm (backward)", "result"]
    header += ([] if every_case else ["reference", "cases"]) + list(columns)
    rows: dict[tuple[str, str], tuple[int, dict[str, float], int]] = {}
    kind_of: dict[tuple[str, str], str] = {}
    todo = list(plugin_cases(*plugin) if plugin else cases())
    variants = [(plugin[0], PLUGIN_REFERENCES[plugin[1]], "autograd")] if plugin else family_variants()
    total = len(todo) + len(variants)
    for done, case in enumerate(todo):
        if on_case is not None:
            on_case(done, total, case.name)
        try:
            diffs = compare_case(case, dtype, device)
        except Exception:  # noqa: BLE001 - a plugin that cannot even load the reference's state fails its row
            if not plugin:
                raise
            diffs = dict.fromkeys(QUANTITIES, float("inf"))
        key = (case.name, case.reference) if every_case else (case.family, case.reference)
        kind_of[key] = case.kind
        count, worst, failed = rows.get(key, (0, dict.fromkeys(QUANTITIES, 0.0), 0))
        worst = {q: max(worst[q], diffs[q]) for q in QUANTITIES}
        rows[key] = (count + 1, worst, failed + (max(diffs.values()) > tolerance))
    table_rows: list[list[str]] = []
    for (label, ref), (count, worst, failed) in rows.items():
        kind = kind_of[(label, ref)]
        cells = []
        for quantities in columns.values():
            present = [q for q in quantities if q in QUANTITIES_OF[kind]]
            value = max((worst[q] for q in present), default=None)
            cells.append("-" if value is None else f"{value:.1e}" if value else "0")
        result = "pass" if not failed else f"FAIL {failed}/{count}"
        table_rows.append([label, result, *([] if every_case else [ref, str(count)]), *cells])
    # One unit on both sides of the summary: a case (not a family row), a contract row, a gradcheck, an extra.
    failures = sum(failed for _, _, failed in rows.values())
    checked_cases = sum(count for count, _, _ in rows.values())
    lines = []
    family_rows = {}  # (spec, backward) -> torch_test_families' rows; float64 and CPU whatever --dtype/--device say
    for done, (spec, kind, backward) in enumerate(variants, start=len(todo)):
        if on_case is not None:
            on_case(done, total, f"torch's tests, {spec} ({backward})")
        family_rows[(spec, backward)] = torch_test_families(spec, kind, backward)
    family_units = sum(len(rows) for rows in family_rows.values())
    failures += sum(failure is not None for rows in family_rows.values() for _, failure in rows)
    if plugin:
        contract = contract_checks(plugin[0], dtype, device)
        failures += sum(not ok for _, ok in contract)
        lines += [Text.assemble(f"{label}: ", ("pass", "green") if ok else ("FAIL", "red")) for label, ok in contract]
        lines += family_lines(family_rows[(plugin[0], "autograd")])
        table = fitted(title.replace("hand-written norms", plugin[0]), header, table_rows, width, wide)
        summary = Text(f"{checked_cases + len(contract) + family_units - failures} passed, {failures} failed")
        return [table, *lines, summary], failures
    for kind, backward, spatial in gradcheck_cases():
        try:
            ok = gradcheck(kind, backward, spatial, device)
        except RuntimeError:
            ok = False
        failures += not ok
        shape = "(N,C,H,W)" if spatial else "(N,C)"
        lines.append(Text.assemble(f"gradcheck float64, {kind} ({backward}), {shape}: ",
                                   ("pass", "green") if ok else ("FAIL", "red")))  # fmt: skip
    lines.append(Text("torch's test families: " + ", ".join(TORCH_FAMILIES), style="dim"))
    for (spec, backward), rows in family_rows.items():
        lines += family_lines(rows, f"{spec} ({backward})")
    extras = extra_checks()
    for label, value, ok in extras:
        failures += not ok
        lines.append(Text.assemble(f"{label}: {value:.1e} ", ("pass", "green") if ok else ("FAIL", "red")))
    total = checked_cases + len(gradcheck_cases()) + family_units + len(extras)
    names = {name: ", ".join(SHORT_NAMES[q] for q in qs) for name, qs in columns.items()}
    legend = ", ".join(f"{name} = {qs}" for name, qs in names.items() if name != qs)
    if every_case:
        legend = ", ".join(f"{SHORT_NAMES[q]} = {q}" for q in QUANTITIES)
    summary = Text(f"{total - failures} passed, {failures} failed")
    table = fitted(title, header, table_rows, width, wide)
    return [table, *lines, Text(f"columns: {legend}", style="dim"), summary], failures


_STATS = {"running_mean", "running_var", "num_batches_tracked"}
QUANTITIES_OF = {kind: set(QUANTITIES) - (_STATS if kind in ("layer", "group") else set()) for kind in REFERENCE_NAMES}
