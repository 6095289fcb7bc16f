"""`bnbench check`: every hand-written norm against its reference, over a grid of cases, plus gradcheck.

References: nn.BatchNorm for `scratch`, nn.LayerNorm for `layer`, nn.GroupNorm for `group`;
where PyTorch has no counterpart, the definition: Ghost BN is nn.BatchNorm applied to each virtual
batch in turn, Batch Renormalization with rmax = 1, dmax = 0 is nn.BatchNorm, and with wider limits
it is the paper's formula written out below. The same grid drives tests/nn/test_norms.py, so the command
and the tests prove the same things.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
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
    failures = sum(not ok for _, ok in rows)
    table = fitted(f"{spec}: the norm contract on {device} (no reference; --reference torch|layer|group compares)",
                   ["check", "result"], [[label, "pass" if ok else "FAIL"] for label, ok in rows], width)  # fmt: skip
    return [table, Text(f"{len(rows) - failures} passed, {failures} failed")], failures


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
    for done, case in enumerate(todo):
        if on_case is not None:
            on_case(done, len(todo), case.name)
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
    if plugin:
        contract = contract_checks(plugin[0], dtype, device)
        failures += sum(not ok for _, ok in contract)
        lines += [Text.assemble(f"{label}: ", ("pass", "green") if ok else ("FAIL", "red")) for label, ok in contract]
        table = fitted(title.replace("hand-written norms", plugin[0]), header, table_rows, width, wide)
        summary = Text(f"{checked_cases + len(contract) - failures} passed, {failures} failed")
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
    extras = extra_checks()
    for label, value, ok in extras:
        failures += not ok
        lines.append(Text.assemble(f"{label}: {value:.1e} ", ("pass", "green") if ok else ("FAIL", "red")))
    total = checked_cases + len(gradcheck_cases()) + len(extras)
    names = {name: ", ".join(SHORT_NAMES[q] for q in qs) for name, qs in columns.items()}
    legend = ", ".join(f"{name} = {qs}" for name, qs in names.items() if name != qs)
    if every_case:
        legend = ", ".join(f"{SHORT_NAMES[q]} = {q}" for q in QUANTITIES)
    summary = Text(f"{total - failures} passed, {failures} failed")
    table = fitted(title, header, table_rows, width, wide)
    return [table, *lines, Text(f"columns: {legend}", style="dim"), summary], failures


_STATS = {"running_mean", "running_var", "num_batches_tracked"}
QUANTITIES_OF = {kind: set(QUANTITIES) - (_STATS if kind in ("layer", "group") else set()) for kind in REFERENCE_NAMES}
