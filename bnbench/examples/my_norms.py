"""A norm and a model written outside bnbench, used by name in a config, with no edit to bnbench:

    norm:  {kind: my_norms:MyBatchNorm}
    model: {name: my_norms:tiny_mlp}

Run from the folder holding this file (bnbench also looks there), or put it on PYTHONPATH, or install
it in a package that registers the names (entry-point groups `bnbench.norms` / `bnbench.models`).
"""

from __future__ import annotations

import torch
from torch import nn


class MyBatchNorm(nn.Module):
    """Batch Normalization written out: batch statistics in training, running statistics in eval mode,
    PyTorch's momentum convention, state_dict keys, input checks and low-precision rule, so
    `bnbench check --reference torch` can hold it to nn.BatchNorm and to what PyTorch's tests ask of it.
    Called as MyBatchNorm(features_shape, cfg): (C,) after a Linear layer, (C, H, W) after a convolution;
    cfg is the run's `norm` section (eps, momentum, affine, ...)."""

    uses_batch_statistics = True  # bnbench refuses batches of one for it

    def __init__(self, features_shape: tuple[int, ...], cfg) -> None:
        super().__init__()
        channels = features_shape[0]
        self.eps, self.momentum, self.track = cfg.eps, cfg.momentum, cfg.track_running_stats
        self.weight = nn.Parameter(torch.ones(channels)) if cfg.affine else None
        self.bias = nn.Parameter(torch.zeros(channels)) if cfg.affine else None
        if self.track:
            self.register_buffer("running_mean", torch.zeros(channels))
            self.register_buffer("running_var", torch.ones(channels))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.eps <= 0:  # the checks and words of nn.BatchNorm
            raise ValueError(f"batch_norm eps must be positive during training, but got {self.eps}")
        if self.training and x.numel() == x.shape[1]:
            raise ValueError(f"Expected more than 1 value per channel when training, got input size {x.shape}")
        dtype = x.dtype  # float16/bfloat16: statistics in float32, the output in the input's dtype, as torch
        x = x.float() if dtype in (torch.float16, torch.bfloat16) else x
        dims = [0] + list(range(2, x.dim()))  # every axis but the channels
        shape = [1, -1] + [1] * (x.dim() - 2)
        if self.training or not self.track:
            mean, var = x.mean(dims), x.var(dims, unbiased=False)
            if self.training and self.track:
                with torch.no_grad():
                    self.num_batches_tracked += 1
                    n = x.numel() / x.shape[1]
                    weight = 1 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                    if n > 0:  # an empty batch leaves the statistics as they were
                        self.running_mean.copy_(self.running_mean.to(mean.dtype).lerp(mean, weight))
                        self.running_var.copy_(self.running_var.to(var.dtype).lerp(var * n / (n - 1), weight))
        else:
            mean, var = self.running_mean, self.running_var
        y = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args) -> None:
        # A state dict saved before PyTorch 0.4.1 has no batch count: keep this module's, as nn.BatchNorm does.
        if self.track:
            state_dict.setdefault(prefix + "num_batches_tracked", self.num_batches_tracked)
        super()._load_from_state_dict(state_dict, prefix, *args)


def tiny_mlp(block, cfg) -> nn.Module:
    """A model: block(features_shape) gives the configured norm and activation for that many features;
    cfg is the run's `model` section. Inputs are (N, 1, 28, 28) images, outputs 10 logits."""
    width = cfg.hidden[0]
    return nn.Sequential(nn.Flatten(), nn.Linear(784, width), block((width,)), nn.Linear(width, 10))
