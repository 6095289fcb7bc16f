"""`bnbench check`'s summary: passed and failed count the same units (cases and checks, never family rows)."""

from __future__ import annotations

import io
import re

import torch
from rich.console import Console

from bnbench.tools.check import (
    TORCH_FAMILIES,
    cases,
    contract_checks,
    extra_checks,
    family_variants,
    gradcheck_cases,
    plugin_cases,
    run_check,
    torch_test_families,
)

BIASED = '''
import torch
from torch import nn


class BiasedBN(nn.BatchNorm2d):
    """BatchNorm whose running variance tracks the biased batch variance (torch's tracks the unbiased one)."""

    def __init__(self, shape, cfg):
        super().__init__(shape[0], eps=cfg.eps, momentum=cfg.momentum, affine=cfg.affine,
                         track_running_stats=cfg.track_running_stats)

    def _check_input_dim(self, x):
        pass

    def forward(self, x):
        if not (self.training and self.track_running_stats):
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        with torch.no_grad():
            self.num_batches_tracked += 1
            w = 1 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            self.running_mean.lerp_(x.mean(dims), w)
            self.running_var.lerp_(x.var(dims, unbiased=False), w)
        shape = [1, -1] + [1] * (x.dim() - 2)
        y = (x - x.mean(dims).view(shape)) / torch.sqrt(x.var(dims, unbiased=False).view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape) if self.affine else y
'''


def _summary(renderables: list) -> tuple[int, int]:
    console = Console(width=200, record=True, file=io.StringIO())
    for item in renderables:
        console.print(item)
    match = re.search(r"(-?\d+) passed, (-?\d+) failed", console.export_text())
    assert match, console.export_text()
    return int(match[1]), int(match[2])


def test_a_plugin_with_a_biased_running_variance_counts_cases_on_both_sides(tmp_path, monkeypatch):
    (tmp_path / "biased.py").write_text(BIASED)
    monkeypatch.syspath_prepend(str(tmp_path))
    renderables, failures = run_check(torch.float64, "cpu", plugin=("biased:BiasedBN", "torch"))
    passed, failed = _summary(renderables)
    units = len(plugin_cases("biased:BiasedBN", "torch")) + len(contract_checks("biased:BiasedBN"))
    units += len(TORCH_FAMILIES)  # one unit per family of torch's tests
    assert passed >= 0 and failed == failures > 0
    assert passed + failed == units
    # every case that tracks running statistics fails on running_var; the others pass; and the families it fails
    tracked = [c for c in plugin_cases("biased:BiasedBN", "torch") if c.norm.track_running_stats]
    families = torch_test_families("biased:BiasedBN", "scratch")
    assert failed == len(tracked) + sum(failure is not None for _, failure in families)


def test_the_built_in_check_counts_cases_on_both_sides():
    renderables, failures = run_check(torch.float64, "cpu")
    passed, failed = _summary(renderables)
    assert failed == failures == 0
    families = len(family_variants()) * len(TORCH_FAMILIES)
    assert passed == len(cases()) + len(gradcheck_cases()) + families + len(extra_checks())


def test_the_families_name_the_failing_case_of_a_norm_that_ignores_eps_and_empty_batches(tmp_path, monkeypatch):
    (tmp_path / "biased.py").write_text(BIASED)
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = dict(torch_test_families("biased:BiasedBN", "scratch"))
    assert list(rows) == list(TORCH_FAMILIES)
    assert rows["input checks"] == "eps=0: torch raises ValueError, this returns a tensor"
    assert rows["empty batch"] is not None and rows["empty batch"].startswith("(0,4) in training: running_mean")
    assert rows["second derivatives"] is None and rows["batched gradients and vmap"] is None
