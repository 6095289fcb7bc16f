"""`bnbench check`: bnbench's BatchNorm against nn.BatchNorm over a grid of cases, plus gradcheck.

The same grid drives tests/test_norms.py, so the command and the tests prove the same things.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import nn

from bnbench.norms import BatchNorm

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
)
SHORT_NAMES = dict(
    zip(
        QUANTITIES,
        ("y", "dx", "dweight", "dbias", "run_mean", "run_var", "n_batches", "eval y", "eval dx"),
        strict=True,
    )
)
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
SHAPES = ((2, 3), (7, 5), (2, 3, 4, 4), (5, 4, 3, 5))  # N=2 and odd sizes, 2-D and 4-D
TRAIN_STEPS = 3


@dataclass(frozen=True)
class Case:
    shape: tuple[int, ...]
    affine: bool
    track_running_stats: bool
    momentum: float | None
    backward: str

    @property
    def name(self) -> str:
        momentum = "cma" if self.momentum is None else f"m{self.momentum:g}"
        stats = momentum if self.track_running_stats else "no-stats"
        return f"{'x'.join(map(str, self.shape))} {'affine' if self.affine else 'plain'} {stats} {self.backward}"


def cases() -> list[Case]:
    grid = []
    for shape, affine, backward in itertools.product(SHAPES, (True, False), ("autograd", "manual")):
        grid += [Case(shape, affine, True, m, backward) for m in (0.1, 0.5, None)]
        grid.append(Case(shape, affine, False, 0.1, backward))  # momentum is unused without running stats
    return grid


def compare_case(case: Case, dtype: torch.dtype = torch.float64, device: str = "cpu") -> dict[str, float]:
    """Max abs difference per quantity over TRAIN_STEPS training steps, then one eval step."""
    gen = torch.Generator().manual_seed(0)
    channels = case.shape[1]
    kwargs = dict(momentum=case.momentum, affine=case.affine, track_running_stats=case.track_running_stats)
    ref = (nn.BatchNorm2d if len(case.shape) == 4 else nn.BatchNorm1d)(channels, **kwargs)
    ours = BatchNorm(channels, backward=case.backward, **kwargs)
    if case.affine:
        with torch.no_grad():
            ref.weight.copy_(torch.rand(channels, generator=gen) + 0.5)
            ref.bias.copy_(torch.randn(channels, generator=gen))
    ours.load_state_dict(ref.state_dict())
    ref.to(device, dtype)
    ours.to(device, dtype)
    diffs = dict.fromkeys(QUANTITIES, 0.0)

    def note(key: str, a: torch.Tensor | None, b: torch.Tensor | None) -> None:
        if a is not None and b is not None:
            diffs[key] = max(diffs[key], (a.double() - b.double()).abs().max().item())

    def step(prefix: str) -> None:
        # Shifted, scaled inputs: a mean far from 0 is where careless variance formulas lose accuracy.
        x = (torch.randn(case.shape, generator=gen) * 3 + 2).to(device, dtype)
        dy = torch.randn(case.shape, generator=gen).to(device, dtype)
        x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
        y_ref, y_ours = ref(x_ref), ours(x_ours)
        y_ref.backward(dy)
        y_ours.backward(dy)
        note(f"{prefix}output", y_ref, y_ours)
        note(f"{prefix}grad_input", x_ref.grad, x_ours.grad)

    for _ in range(TRAIN_STEPS):
        step("")
        if case.affine:
            note("grad_weight", ref.weight.grad, ours.weight.grad)
            note("grad_bias", ref.bias.grad, ours.bias.grad)
            ref.zero_grad()
            ours.zero_grad()
        for buffer in ("running_mean", "running_var", "num_batches_tracked"):
            note(buffer, getattr(ref, buffer), getattr(ours, buffer))
    ref.eval()
    ours.eval()
    step("eval_")
    return diffs


def gradcheck(backward: str, spatial: bool, device: str = "cpu") -> bool:
    """torch.autograd.gradcheck in float64 of the training-mode forward w.r.t. input, weight, bias."""
    module = BatchNorm(3, backward=backward).to(device, torch.float64)
    shape = (4, 3, 2, 3) if spatial else (5, 3)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(device).requires_grad_()
    w = (torch.rand(3, generator=gen, dtype=torch.float64) + 0.5).to(device).requires_grad_()
    b = torch.randn(3, generator=gen, dtype=torch.float64).to(device).requires_grad_()

    def forward(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(module, {"weight": w, "bias": b}, (x,))

    return torch.autograd.gradcheck(forward, (x, w, b), eps=1e-6, atol=1e-7)
