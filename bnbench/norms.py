"""Normalization layers and the factory that the model builders take.

`BatchNorm` is bnbench's own Batch Normalization, written from tensor operations, with the
exact semantics of nn.BatchNorm1d/2d (see `bnbench check` and tests/test_norms.py):

* statistics per channel: over N for (N, C) inputs, over N, H, W for (N, C, H, W) inputs;
* training normalizes with the biased batch variance, but `running_var` tracks the unbiased one;
* running = (1 - momentum) * running + momentum * batch; momentum=None is a cumulative average;
* the mode comes from `self.training`, not from whether gradients are enabled;
* running statistics are registered buffers, so they follow `.to(device)` and live in `state_dict`.

Backward variants (`backward=`):

* "autograd": the forward is plain tensor operations and autograd differentiates it.
* "manual": `_BatchNormFn` with the closed-form gradient. With x_hat = (x - mean) * inv_std and
  y = gamma * x_hat + beta, summing over the m elements of a channel:
      dbeta  = sum(dy),   dgamma = sum(dy * x_hat)
      dx = gamma * inv_std * (dy - mean(dy) - x_hat * mean(dy * x_hat))
  The last line follows from the chain rule through mean and var: d x_hat / d x has an identity
  part (inv_std), a part through the mean (-inv_std / m), and a part through the variance
  (-inv_std * x_hat_i * x_hat_j / m). It saves only x_hat, inv_std and gamma for backward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from bnbench.config import NormConfig

# A norm factory: (num_features, spatial) -> module; spatial=True for (N, C, H, W) inputs.
NormFactory = Callable[[int, bool], nn.Module]


def _reduce_dims(x: torch.Tensor) -> tuple[int, ...]:
    if x.dim() == 2:
        return (0,)
    if x.dim() == 4:
        return (0, 2, 3)
    raise ValueError(f"BatchNorm expects (N, C) or (N, C, H, W) input, got shape {tuple(x.shape)}")


class _BatchNormFn(torch.autograd.Function):
    """Normalize with batch statistics; backward is the closed form from the module docstring."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float):
        dims = _reduce_dims(x)
        mean, x_hat, var = _centered_stats(x, dims)
        inv_std = torch.rsqrt(var + eps)
        x_hat.mul_(inv_std)  # x_hat is a fresh tensor (x - mean): normalize it in place
        ctx.save_for_backward(x_hat, inv_std, weight)
        ctx.dims = dims
        y = x_hat.clone() if weight is None else (x_hat * weight.view(mean.shape)).add_(bias.view(mean.shape))
        return y, mean.flatten(), var.flatten()

    @staticmethod
    def backward(ctx, dy: torch.Tensor, _dmean, _dvar):
        x_hat, inv_std, weight = ctx.saved_tensors
        dims = ctx.dims
        # One full-size buffer serves both the reduction and dx: on the CPU every fresh large
        # tensor costs page faults, which here cost more than the arithmetic.
        buffer = dy * x_hat
        sum_dy_xhat = buffer.sum(dim=dims, keepdim=True)
        sum_dy = dy.sum(dim=dims, keepdim=True)
        m = dy.numel() // sum_dy.numel()
        scale = inv_std if weight is None else inv_std * weight.view(inv_std.shape)
        # dx = scale * (dy - mean(dy) - x_hat * mean(dy * x_hat))
        dx = torch.mul(x_hat, scale * sum_dy_xhat / -m, out=buffer).add_(scale * sum_dy / -m).addcmul_(dy, scale)
        dweight = dbias = None
        if weight is not None:
            dweight, dbias = sum_dy_xhat.flatten(), sum_dy.flatten()
        return dx, dweight, dbias, None


def _centered_stats(x: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, x - mean, biased var), kept dims. Two passes: on the CPU this is several times faster
    than torch.var_mean's Welford reduction, and as accurate for activations of this size."""
    mean = x.mean(dim=dims, keepdim=True)
    centered = x - mean
    return mean, centered, centered.square().mean(dim=dims, keepdim=True)


class BatchNorm(nn.Module):
    """Batch Normalization for (N, C) and (N, C, H, W) inputs, equal to nn.BatchNorm1d/2d."""

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        backward: str = "autograd",
    ) -> None:
        super().__init__()
        if backward not in ("autograd", "manual"):
            raise ValueError(f"backward must be 'autograd' or 'manual', got {backward!r}")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats, self.backward = affine, track_running_stats, backward
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
            f"track_running_stats={self.track_running_stats}, backward={self.backward}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dims = _reduce_dims(x)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        # As nn.BatchNorm: batch statistics in training, or whenever there are no running ones.
        use_batch_stats = self.training or self.running_mean is None
        update_running = self.training and self.track_running_stats and self.running_mean is not None
        if not use_batch_stats:
            inv_std = torch.rsqrt(self.running_var + self.eps).view(shape)
            y = (x - self.running_mean.view(shape)) * inv_std
            return y if self.weight is None else torch.addcmul(self.bias.view(shape), y, self.weight.view(shape))
        if self.backward == "manual":
            y, mean, var = _BatchNormFn.apply(x, self.weight, self.bias, self.eps)
        else:
            mean, centered, var = _centered_stats(x, dims)
            y = centered * torch.rsqrt(var + self.eps)
            mean, var = mean.flatten(), var.flatten()
            if self.weight is not None:
                y = torch.addcmul(self.bias.view(shape), y, self.weight.view(shape))
        if update_running:
            self._update_running(mean.detach(), var.detach(), x.numel() // x.shape[1])
        return y

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        self.num_batches_tracked.add_(1)
        # momentum=None: cumulative moving average, weight 1/t for the t-th batch (as PyTorch).
        # Kept a tensor so that reading the counter never syncs the host with the device.
        factor = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.to(mean.dtype)
        unbiased_var = var * (count / max(count - 1, 1))
        self.running_mean.lerp_(mean, factor)
        self.running_var.lerp_(unbiased_var, factor)


def make_norm_factory(cfg: NormConfig) -> NormFactory:
    """The norm choice as a factory for the model builders (never a copy of a model per norm)."""
    kwargs = dict(eps=cfg.eps, momentum=cfg.momentum, affine=cfg.affine, track_running_stats=cfg.track_running_stats)
    if cfg.kind == "none":
        return lambda num_features, spatial: nn.Identity()
    if cfg.kind == "torch":
        return lambda num_features, spatial: (nn.BatchNorm2d if spatial else nn.BatchNorm1d)(num_features, **kwargs)
    return lambda num_features, spatial: BatchNorm(num_features, backward=cfg.backward, **kwargs)


def is_batch_norm(module: nn.Module) -> bool:
    return isinstance(module, (BatchNorm, nn.modules.batchnorm._BatchNorm))


class batch_stats_eval:
    """Context: evaluate with each batch's own statistics, leaving running statistics untouched.

    Puts every BN layer in training mode with track_running_stats off, which both nn.BatchNorm
    and `BatchNorm` read as "use batch statistics, update nothing"; restores both flags after.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if is_batch_norm(m)]

    def __enter__(self) -> None:
        self.saved = [(m.training, m.track_running_stats) for m in self.layers]
        for m in self.layers:
            m.training, m.track_running_stats = True, False

    def __exit__(self, *exc: object) -> None:
        for m, (training, track) in zip(self.layers, self.saved, strict=True):
            m.training, m.track_running_stats = training, track
