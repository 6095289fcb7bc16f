"""Normalization layers and the factory that the model builders take.

`BatchNorm` is bnbench's own Batch Normalization, written from tensor operations, with the
exact semantics of nn.BatchNorm1d/2d (see `bnbench check` and tests/nn/test_norms.py):

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

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from bnbench.config import NORM_KINDS, NormConfig

# A norm factory takes the shape of one example's features at its position: (C,) after a Linear
# layer, (C, H, W) after a convolution (LayerNorm's affine parameters need all three).
NormFactory = Callable[[tuple[int, ...]], nn.Module]


# Inputs in these dtypes are normalized in float32 and the output is returned in the input's dtype, as torch's
# kernels accumulate their statistics in float32 ("opmath"); parameters and running statistics keep their own
# dtype (float32 in torch's mixed mode, the low precision when the whole module was cast).
LOW_PRECISION = (torch.float16, torch.bfloat16)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """x in float32 when it is float16 or bfloat16 (the dtype the statistics are computed in), else x."""
    return x.float() if x.dtype in LOW_PRECISION else x


def _as(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A parameter or buffer in the computation's dtype (differentiable: its gradient returns in its own dtype)."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


def _keep_memory_format(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """y in x's channels_last layout when x is channels_last (and not also contiguous), as torch's GroupNorm."""
    for rank, layout in ((4, torch.channels_last), (5, torch.channels_last_3d)):
        if x.dim() == rank and not x.is_contiguous() and x.is_contiguous(memory_format=layout):
            return y.contiguous(memory_format=layout)
    return y


def _reduce_dims(x: torch.Tensor) -> tuple[int, ...]:
    if x.dim() == 2:
        return (0,)
    if x.dim() == 4:
        return (0, 2, 3)
    raise ValueError(f"BatchNorm expects (N, C) or (N, C, H, W) input, got shape {tuple(x.shape)}")


def _verify_batch_size(size: list[int] | torch.Size) -> None:
    """torch.nn.functional's check, in its words: training needs more than one value per channel
    (N times the spatial size; an empty batch, 0 values, passes)."""
    if math.prod([size[0], *size[2:]]) == 1:
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {size}")


def _stats_grad(
    x_hat: torch.Tensor,
    inv_std: torch.Tensor,
    m: int,
    dmean: torch.Tensor | None,
    dvar: torch.Tensor | None,
    dinv_std: torch.Tensor | None,
) -> torch.Tensor | None:
    """The input's gradient through the statistics the normalizing Functions also return (mean, biased
    var, inv_std = (var + eps)^-1/2, kept dims), or None when none of them has a gradient. First-order
    training never has one (the module uses them detached); a double backward does, because the backward
    reads x_hat and inv_std, which are outputs. d mean / d x_i = 1/m; d var / d x_i = 2 (x_i - mean) / m
    = 2 x_hat_i / (m inv_std); d inv_std / d var = -inv_std^3 / 2."""
    if dinv_std is not None:
        through_inv_std = dinv_std * inv_std.pow(3) * -0.5
        dvar = through_inv_std if dvar is None else dvar + through_inv_std
    dx = None if dvar is None else x_hat * (dvar * 2 / (inv_std * m))
    if dmean is not None:
        dx = (dmean / m).expand_as(x_hat) if dx is None else dx + dmean / m
    return dx


def _plain(grad: torch.Tensor) -> bool:
    """Whether a backward may write into reused buffers: no graph is being recorded (no create_graph, so
    nothing differentiates this backward) and the gradient is an ordinary tensor, not one of torch.func's
    wrappers (vmap's batched tensors, grad's tracking tensors, gradcheck's batched gradients). Otherwise
    the backward is written out of place, differentiable again and batched by vmap."""
    functorch = torch._C._functorch
    return not (
        torch.is_grad_enabled()
        or functorch.is_functorch_wrapped_tensor(grad)
        or functorch.is_legacy_batchedtensor(grad)
    )


def _add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return b if a is None else a if b is None else a + b


def _normalize_grad(g: torch.Tensor, x_hat: torch.Tensor, inv_std: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """dx = inv_std * (g - mean(g) - x_hat * mean(g * x_hat)) for g the gradient reaching x_hat, out of
    place (differentiable again, and batched by vmap)."""
    mean_g_xhat = (g * x_hat).mean(dim=dims, keepdim=True)
    mean_g = g.mean(dim=dims, keepdim=True)
    return (g - mean_g - x_hat * mean_g_xhat) * inv_std


class _BatchNormFn(torch.autograd.Function):
    """Normalize with batch statistics and apply gamma, beta; backward is the closed form from the module
    docstring. Outputs (y, x_hat, mean, var, inv_std), the statistics with kept dims: x_hat and inv_std are
    outputs rather than hidden intermediates so that a double backward sees how they depend on x (the
    backward's gradient flows back into this Function), which is what makes the closed form twice
    differentiable. Every operation is out of place and the Function uses `setup_context`, so torch.func
    (vmap, grad, jacrev) composes with it; `generate_vmap_rule` batches it."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, eps: float, dims: tuple[int, ...]):
        mean, x_hat, var = _centered_stats(x, dims)
        inv_std = torch.rsqrt(var + eps)
        x_hat.mul_(inv_std)  # a fresh tensor (x - mean), not yet saved: in place is safe here, vmap included
        y = (x_hat * weight.view(mean.shape)).add_(bias.view(mean.shape))
        return y, x_hat, mean, var, inv_std

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, weight, _, _, dims = inputs
        _, x_hat, _, _, inv_std = output
        ctx.save_for_backward(x_hat, inv_std, weight)
        ctx.dims = dims
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, dy, dx_hat, dmean, dvar, dinv_std):
        x_hat, inv_std, weight = ctx.saved_tensors
        dims = ctx.dims
        m = x_hat.numel() // max(inv_std.numel(), 1)
        dx = dweight = dbias = None
        if dy is not None and _plain(dy):
            # First-order backward on plain tensors (no create_graph, no torch.func): the closed form into
            # one reused buffer, as fast as before; on the CPU every fresh large tensor costs page faults.
            buffer = dy * x_hat
            sum_dy_xhat = buffer.sum(dim=dims, keepdim=True)
            sum_dy = dy.sum(dim=dims, keepdim=True)
            scale = inv_std * weight.view(inv_std.shape)
            dx = torch.mul(x_hat, scale * sum_dy_xhat / -m, out=buffer).add_(scale * sum_dy / -m).addcmul_(dy, scale)
            dweight, dbias = sum_dy_xhat.flatten(), sum_dy.flatten()
        elif dy is not None:
            # (C,) sums, kept-dim views of them: flatten has no batching rule in gradcheck's batched grads
            dweight, dbias = (dy * x_hat).sum(dim=dims), dy.sum(dim=dims)
            scale = inv_std * weight.view(inv_std.shape)
            # dx = scale * (dy - mean(dy) - x_hat * mean(dy * x_hat)), two fused multiply-adds
            a, b = scale * dweight.view(scale.shape) / -m, scale * dbias.view(scale.shape) / -m
            dx = torch.addcmul(torch.addcmul(b, x_hat, a), dy, scale)
        if dx_hat is not None:
            dx = _add(dx, _normalize_grad(dx_hat, x_hat, inv_std, dims))
        dx = _add(dx, _stats_grad(x_hat, inv_std, m, dmean, dvar, dinv_std))
        return dx, dweight, dbias, None, None


def _centered_stats(x: torch.Tensor, dims: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(mean, x - mean, biased var), kept dims. Two passes: on the CPU this is several times faster
    than torch.var_mean's Welford reduction, and as accurate for activations of this size."""
    mean = x.mean(dim=dims, keepdim=True)
    centered = x - mean
    return mean, centered, centered.square().mean(dim=dims, keepdim=True)


class BatchNorm(nn.Module):
    """Batch Normalization for (N, C) and (N, C, H, W) inputs, equal to nn.BatchNorm1d/2d."""

    _version = 2  # as torch's _NormBase: version 2 added num_batches_tracked (see _load_from_state_dict)

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

    def _check_input(self, x: torch.Tensor, batch_stats: bool) -> tuple[int, ...]:
        """torch's checks, in its words and exception types: the input's rank (ValueError), its channel
        count against the parameters or running statistics (RuntimeError), more than one value per channel
        and a positive eps when normalizing with batch statistics, a non-negative eps otherwise
        (ValueError). Returns the reduced dims."""
        dims = _reduce_dims(x)
        if x.shape[1] != self.num_features:
            for name in ("running_mean", "weight"):
                if getattr(self, name) is not None:
                    raise RuntimeError(f"{name} should contain {x.shape[1]} elements not {self.num_features}")
        if batch_stats:
            _verify_batch_size(x.size())
            if self.eps <= 0.0:
                raise ValueError(f"batch_norm eps must be positive during training, but got {self.eps}")
        elif self.eps < 0.0:
            raise ValueError(f"batch_norm eps must be non-negative, but got {self.eps}")
        return dims

    def _empty(self, x: torch.Tensor, update_running: bool) -> torch.Tensor:
        """An empty batch, as torch: an empty output (gamma and beta get zero gradients), running statistics
        unchanged, the batch counted in num_batches_tracked."""
        if update_running:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
        if self.weight is None:
            return x.clone()
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return (x * self.weight.view(shape) + self.bias.view(shape)).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As nn.BatchNorm: batch statistics in training, or whenever there are no running ones.
        use_batch_stats = self.training or self.running_mean is None
        update_running = self.training and self.track_running_stats and self.running_mean is not None
        dims = self._check_input(x, use_batch_stats)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        if x.numel() == 0:
            return self._empty(x, update_running)
        out_dtype, x = x.dtype, _upcast(x)  # float16/bfloat16: statistics in float32, output in the input's dtype
        weight, bias = _as(self.weight, x.dtype), _as(self.bias, x.dtype)
        if not use_batch_stats:
            inv_std = torch.rsqrt(_as(self.running_var, x.dtype) + self.eps).view(shape)
            y = (x - _as(self.running_mean, x.dtype).view(shape)) * inv_std
            y = y if weight is None else torch.addcmul(bias.view(shape), y, weight.view(shape))
            return y.to(out_dtype)
        if self.backward == "manual" and weight is not None:
            y, _, mean, var, _ = _BatchNormFn.apply(x, weight, bias, self.eps, dims)
            mean, var = mean.flatten(), var.flatten()
        elif self.backward == "manual":
            y, mean, var, _ = _NormalizeFn.apply(x, dims, self.eps)
            y, mean, var = y.clone(), mean.flatten(), var.flatten()  # y is saved for backward: not the output
        else:
            mean, centered, var = _centered_stats(x, dims)
            y = centered * torch.rsqrt(var + self.eps)
            mean, var = mean.flatten(), var.flatten()
            if weight is not None:
                y = torch.addcmul(bias.view(shape), y, weight.view(shape))
        if update_running:
            self._update_running(mean.detach(), var.detach(), x.numel() // x.shape[1])
        return y.to(out_dtype)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        """As torch's _NormBase: a state dict of version < 2 (before num_batches_tracked existed, the
        version in its `_metadata`) loads with the counter kept (0 in a fresh module)."""
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            counter = self.num_batches_tracked
            ok = counter is not None and counter.device.type != "meta"
            state_dict[key] = counter if ok else torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)

    def reset_running_stats(self) -> None:
        if self.running_mean is not None:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        self.num_batches_tracked.add_(1)
        # momentum=None: cumulative moving average, weight 1/t for the t-th batch (as PyTorch).
        # Kept a tensor so that reading the counter never syncs the host with the device.
        factor = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked.to(mean.dtype)
        unbiased_var = var * (count / max(count - 1, 1))
        for running, batch in ((self.running_mean, mean), (self.running_var, unbiased_var)):
            if running.dtype == batch.dtype:
                running.lerp_(batch, factor)
            else:  # running statistics in another dtype (float16 ones, a float64 input): averaged in the batch's
                running.copy_(running.to(batch.dtype).lerp_(batch, factor))


class GhostBatchNorm(BatchNorm):
    """Ghost Batch Normalization (Hoffer et al. 2017): in training, each run of `virtual_batch_size`
    examples is normalized with its own statistics and updates the running statistics once, in
    order; exactly nn.BatchNorm applied to each virtual batch in turn. Eval mode is BatchNorm's.
    Virtual batches are a training device: with `whole_batch` set (by `batch_stats_eval`) each batch is
    normalized whole with its own statistics, as nn.BatchNorm would."""

    whole_batch: bool = False

    def __init__(self, num_features: int, virtual_batch_size: int = 32, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.virtual_batch_size = virtual_batch_size

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, virtual_batch_size={self.virtual_batch_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.whole_batch or x.shape[0] <= self.virtual_batch_size:
            return super().forward(x)
        chunks = list(x.split(self.virtual_batch_size))
        if chunks[-1].shape[0] == 1:  # one example has no batch statistics: it joins the previous chunk
            chunks[-2:] = [torch.cat(chunks[-2:])]
        batch_norm = super().forward
        return torch.cat([batch_norm(c) for c in chunks])


class BatchRenorm(BatchNorm):
    """Batch Renormalization (Ioffe 2017). Training output, with batch mean m and std s = sqrt(var + eps)
    and running std S = sqrt(running_var + eps):
        r = clip(s / S, 1/rmax', rmax'),  d = clip((m - running_mean) / S, -dmax', dmax')   (no gradient)
        y = gamma * ((x - m) / s * r + d) + beta
    rmax' and dmax' open linearly from 1 and 0 to rmax and dmax over the first `warmup` steps (counted by
    num_batches_tracked). With rmax = 1 and dmax = 0 this is BatchNorm. Running statistics and eval mode
    are BatchNorm's (PyTorch's convention: running_var tracks the unbiased batch variance)."""

    def __init__(self, num_features: int, rmax: float = 3.0, dmax: float = 5.0, warmup: int = 0, **kwargs) -> None:
        super().__init__(num_features, **kwargs)
        self.rmax, self.dmax, self.warmup = rmax, dmax, warmup

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rmax={self.rmax}, dmax={self.dmax}, warmup={self.warmup}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.running_mean is None or not self.track_running_stats:
            return super().forward(x)  # eval mode, or batch-statistics evaluation: plain BatchNorm
        dims = self._check_input(x, batch_stats=True)
        if x.numel() == 0:
            return self._empty(x, update_running=True)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        out_dtype, x = x.dtype, _upcast(x)
        weight, bias = _as(self.weight, x.dtype), _as(self.bias, x.dtype)
        running_mean, running_var = _as(self.running_mean, x.dtype), _as(self.running_var, x.dtype)
        mean, centered, var = _centered_stats(x, dims)
        inv_std = torch.rsqrt(var + self.eps)
        with torch.no_grad():
            # Tensors, not Python numbers: reading num_batches_tracked on the host would sync a GPU.
            opened = (self.num_batches_tracked / self.warmup).clamp(max=1.0) if self.warmup else torch.ones(())
            rmax = 1 + (self.rmax - 1) * opened.to(x.dtype)
            dmax = self.dmax * opened.to(x.dtype)
            running_inv_std = torch.rsqrt(running_var + self.eps).view(shape)
            r = torch.minimum(torch.maximum(running_inv_std / inv_std, 1 / rmax), rmax)
            d = torch.minimum(torch.maximum((mean - running_mean.view(shape)) * running_inv_std, -dmax), dmax)
        y = centered * (inv_std * r) + d
        if weight is not None:
            y = torch.addcmul(bias.view(shape), y, weight.view(shape))
        self._update_running(mean.detach().flatten(), var.detach().flatten(), x.numel() // x.shape[1])
        return y.to(out_dtype)


class _NormalizeFn(torch.autograd.Function):
    """x_hat = (x - mean) / sqrt(var + eps) over `dims`, with the closed-form backward of the module
    docstring (without gamma): dx = inv_std * (g - mean(g) - x_hat * mean(g * x_hat)). Outputs
    (x_hat, mean, var, inv_std) with kept dims; as `_BatchNormFn`, out of place, twice differentiable,
    and batched by vmap."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, dims: tuple[int, ...], eps: float):
        mean, x_hat, var = _centered_stats(x, dims)
        inv_std = torch.rsqrt(var + eps)
        return x_hat.mul_(inv_std), mean, var, inv_std  # x_hat: a fresh tensor, normalized in place

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x_hat, _, _, inv_std = output
        ctx.save_for_backward(x_hat, inv_std)
        ctx.dims = inputs[1]
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, grad, dmean, dvar, dinv_std):
        x_hat, inv_std = ctx.saved_tensors
        if grad is not None and _plain(grad):  # first order on plain tensors: one reused buffer, as before
            buffer = grad * x_hat
            mean_g_xhat = buffer.mean(dim=ctx.dims, keepdim=True)
            mean_g = grad.mean(dim=ctx.dims, keepdim=True)
            dx = torch.mul(x_hat, mean_g_xhat, out=buffer).neg_().add_(grad).sub_(mean_g).mul_(inv_std)
        else:
            dx = None if grad is None else _normalize_grad(grad, x_hat, inv_std, ctx.dims)
        dx = _add(dx, _stats_grad(x_hat, inv_std, x_hat.numel() // max(inv_std.numel(), 1), dmean, dvar, dinv_std))
        return dx, None, None


def _normalize(x: torch.Tensor, dims: tuple[int, ...], eps: float, backward: str) -> torch.Tensor:
    if backward == "manual":
        return _NormalizeFn.apply(x, dims, eps)[0]
    _, centered, var = _centered_stats(x, dims)
    return centered * torch.rsqrt(var + eps)


class LayerNorm(nn.Module):
    """Layer Normalization over the last `len(shape)` dims of the input (one example's features, (C,) or
    (C, H, W)), equal to nn.LayerNorm(shape): biased variance, elementwise affine of the features' shape.
    `shape` may be an int (as nn.LayerNorm's normalized_shape). An empty shape is accepted here and refused
    at forward, and an input whose trailing dims are not `shape` is refused (RuntimeError, torch's words)."""

    def __init__(
        self, shape: int | tuple[int, ...], eps: float = 1e-5, affine: bool = True, backward: str = "autograd"
    ) -> None:
        super().__init__()
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.eps, self.backward = eps, backward
        self.weight = nn.Parameter(torch.ones(self.shape)) if affine else None
        self.bias = nn.Parameter(torch.zeros(self.shape)) if affine else None

    def extra_repr(self) -> str:
        return f"{self.shape}, eps={self.eps}, affine={self.weight is not None}, backward={self.backward}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.shape:
            raise RuntimeError(
                "Expected normalized_shape to be at least 1-dimensional, i.e., containing at least one element, "
                "but got normalized_shape = []"
            )
        if tuple(x.shape[x.dim() - len(self.shape) :]) != self.shape or x.dim() < len(self.shape):
            expected = ", ".join(map(str, self.shape))
            raise RuntimeError(
                f"Given normalized_shape={list(self.shape)}, expected input with shape [*, {expected}], "
                f"but got input of size{list(x.shape)}"
            )
        out_dtype, x = x.dtype, _upcast(x)  # float16/bfloat16: statistics in float32, output in the input's dtype
        y = _normalize(x, tuple(range(-len(self.shape), 0)), self.eps, self.backward)
        if self.weight is not None:
            y = torch.addcmul(_as(self.bias, x.dtype), y, _as(self.weight, x.dtype))
        elif self.backward == "manual":
            y = y.clone()  # the manual backward saves its output: an in-place op after it must not touch that
        return y.to(out_dtype)


class GroupNorm(nn.Module):
    """Group Normalization: each example's channels in `num_groups` groups, each group (with its H x W)
    normalized on its own; per-channel affine. Equal to nn.GroupNorm. One group is LayerNorm over
    (C, H, W) with per-channel affine; one group per channel is Instance Normalization."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 backward: str = "autograd") -> None:  # fmt: skip
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"num_channels ({num_channels}) must be divisible by num_groups ({num_groups})")
        self.num_groups, self.num_channels, self.eps, self.backward = num_groups, num_channels, eps, backward
        self.weight = nn.Parameter(torch.ones(num_channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_channels)) if affine else None

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.weight is not None}"

    def _check_input(self, x: torch.Tensor) -> None:
        """torch's checks, in its words: at least 2 dims and the right channel count (RuntimeError), more
        than one value per group (ValueError; in eval mode too, as nn.GroupNorm)."""
        if x.dim() < 2:
            raise RuntimeError(f"Expected at least 2 dimensions for input tensor but received {x.dim()}")
        if x.shape[1] != self.num_channels and self.weight is not None:
            raise RuntimeError(
                "Expected weight to be a vector of size equal to the number of channels in input, but got "
                f"weight of shape [{self.num_channels}] and input of shape {list(x.shape)}"
            )
        if x.shape[1] % self.num_groups:
            raise RuntimeError(
                "Expected number of channels in input to be divisible by num_groups, but got input of shape "
                f"{list(x.shape)} and num_groups={self.num_groups}"
            )
        _verify_batch_size([x.shape[0] * x.shape[1] // self.num_groups, self.num_groups, *x.shape[2:]])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        out_dtype, compute = x.dtype, _upcast(x)  # float16/bfloat16: statistics in float32, output as the input
        # The group's size spelled out (not -1): an empty batch has nothing to infer it from.
        grouped = compute.reshape(x.shape[0], self.num_groups, math.prod(x.shape[1:]) // self.num_groups)
        y = _normalize(grouped, (2,), self.eps, self.backward).view(x.shape)
        if self.weight is not None:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            y = torch.addcmul(_as(self.bias, y.dtype).view(shape), y, _as(self.weight, y.dtype).view(shape))
        elif self.backward == "manual":
            y = y.clone()  # the manual backward saves its output: an in-place op after it must not touch that
        return _keep_memory_format(y.to(out_dtype), x)


def group_count(wanted: int, channels: int) -> int:
    """The largest number of groups <= `wanted` that divides `channels` (32 groups of 100 features
    cannot be; 25 can)."""
    return max(g for g in range(1, min(wanted, channels) + 1) if channels % g == 0)


# The registry: kind -> builder(cfg, features shape). Kinds and their order come from config.NORM_KINDS.
NormBuilder = Callable[[NormConfig, tuple[int, ...]], nn.Module]
NORMS: dict[str, NormBuilder] = {}
# Each hand-written norm's PyTorch counterpart, for `bnbench check` and `bnbench bench`. Ghost BN and
# renorm have none: check holds them to their definitions, bench times them against nn.BatchNorm.
COUNTERPARTS: dict[str, str] = {"scratch": "torch", "layer": "torch_layer", "group": "torch_group"}


def register(kind: str) -> Callable[[NormBuilder], NormBuilder]:
    def add(builder: NormBuilder) -> NormBuilder:
        NORMS[kind] = builder
        return builder

    return add


def _bn_options(cfg: NormConfig) -> dict:
    return dict(eps=cfg.eps, momentum=cfg.momentum, affine=cfg.affine, track_running_stats=cfg.track_running_stats)


@register("none")
def _none(cfg: NormConfig, shape: tuple[int, ...]) -> nn.Module:
    return nn.Identity()


@register("scratch")
def _scratch(cfg: NormConfig, shape: tuple[int, ...]) -> nn.Module:
    return BatchNorm(shape[0], backward=cfg.backward, **_bn_options(cfg))


@register("torch")
def _torch_batch_norm(cfg: NormConfig, shape: tuple[int, ...]) -> nn.Module:
    return (nn.BatchNorm2d if len(shape) == 3 else nn.BatchNorm1d)(shape[0], **_bn_options(cfg))


@register("layer")
def _layer(cfg: NormConfig, shape: tuple[int, ...]) -> nn.Module:
    return LayerNorm(shape, eps=cfg.eps, affine=cfg.affine, backward=cfg.backward)


@register("torch_layer")
def _torch_layer(cfg: NormConfig, shape: tuple[int, ...]) -> nn.Module:
    return nn.LayerNorm(shape, eps=cfg.eps, elementwise_affine=cfg.affine)


@register("group")
def _group(cfg: NormConfig, shape: tuple[int, ...]) -> nn.Module:
    return GroupNorm(group_count(cfg.groups, shape[0]), shape[0], cfg.eps, cfg.affine, cfg.backward)


@register("torch_group")
def _torch_group(cfg: NormConfig, shape: tuple[int, ...]) -> nn.Module:
    return nn.GroupNorm(group_count(cfg.groups, shape[0]), shape[0], eps=cfg.eps, affine=cfg.affine)


@register("ghost")
def _ghost(cfg: NormConfig, shape: tuple[int, ...]) -> nn.Module:
    return GhostBatchNorm(shape[0], cfg.virtual_batch_size, backward=cfg.backward, **_bn_options(cfg))


@register("renorm")
def _renorm(cfg: NormConfig, shape: tuple[int, ...]) -> nn.Module:
    return BatchRenorm(shape[0], cfg.rmax, cfg.dmax, cfg.renorm_warmup, **_bn_options(cfg))


if tuple(NORMS) != NORM_KINDS:
    raise ImportError(f"norms.NORMS {tuple(NORMS)} must build exactly config.NORM_KINDS {NORM_KINDS}")


def norm_builder(kind: str) -> NormBuilder:
    """A registered norm's builder, or a plugin's (plugins.py), called the same way: (cfg, shape)."""
    if kind in NORMS:
        return NORMS[kind]
    from bnbench import plugins

    plugin = plugins.resolve(kind, "norm")
    return lambda cfg, shape: plugins.built(plugins.call(plugin, kind, "norm", shape, cfg), kind, "norm")


def make_norm_factory(cfg: NormConfig) -> NormFactory:
    """The norm choice as a factory for the model builders (never a copy of a model per norm)."""
    build = norm_builder(cfg.kind)
    return lambda shape: build(cfg, tuple(shape))


def is_batch_norm(module: nn.Module) -> bool:
    return isinstance(module, (BatchNorm, nn.modules.batchnorm._BatchNorm))


@torch.no_grad()
def precise_statistics(model: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Replace every BN layer's running statistics by the exact average of the batch statistics it sees
    while `model` runs on `batches` in training mode (Wu & Johnson 2021, "precise BN"), instead of the
    exponential moving average. Weights, momentum and the step counter are left as they were."""
    layers = [m for m in model.modules() if is_batch_norm(m) and m.running_mean is not None]
    if not layers:
        return
    saved = [(m.momentum, m.num_batches_tracked.clone(), m.training) for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # None: cumulative average, each batch weighted 1/count
    was_training = model.training
    model.train()
    with keep_noise_draws(model):
        for x in batches:
            model(x)
    model.train(was_training)
    for m, (momentum, count, training) in zip(layers, saved, strict=True):
        m.momentum, m.training = momentum, training
        m.num_batches_tracked.copy_(count)  # renorm's warm-up counts training steps only


class ShiftNoise(nn.Module):
    """Santurkar et al. 2018's "noisy BN" (§2.1, Fig. 2): after the norm, every unit (channel) is scaled and
    shifted by amounts drawn anew at every training forward pass, so its distribution keeps moving: covariate
    shift injected on purpose. shift ~ U(-s, s), log scale ~ U(-log(1 + s), log(1 + s)), s = `strength`.
    Off in eval mode. The draws come from a generator of its own, seeded by the run's seed and a counter kept
    in the state dict: initial weights and data order are the same run's without noise, and a resumed run
    draws what it would have drawn."""

    def __init__(self, channels: int, strength: float) -> None:
        super().__init__()
        self.channels, self.strength = channels, strength
        self.seed = torch.initial_seed()  # the run's seed (seed_everything ran before the model is built)
        self.draws = 0

    def extra_repr(self) -> str:
        return f"strength={self.strength}"

    def get_extra_state(self) -> dict:
        return {"draws": self.draws}

    def set_extra_state(self, state: dict) -> None:
        self.draws = int(state["draws"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.draws) % 2**63)
        self.draws += 1
        uniform = torch.rand(2, self.channels, generator=generator) * 2 - 1
        shift, scale = uniform[0] * self.strength, torch.exp(uniform[1] * math.log1p(self.strength))
        shape = (1, self.channels) + (1,) * (x.dim() - 2)
        return x * scale.view(shape).to(x.device, x.dtype, non_blocking=True) + shift.view(shape).to(
            x.device, x.dtype, non_blocking=True
        )


class keep_noise_draws:
    """Context: a pass that is not a training step (a diagnostic probe, precise statistics) leaves the
    noise counters as they were, so training draws the same noise with or without it."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if isinstance(m, ShiftNoise)]

    def __enter__(self) -> None:
        self.saved = [m.draws for m in self.layers]

    def __exit__(self, *exc: object) -> None:
        for m, draws in zip(self.layers, self.saved, strict=True):
            m.draws = draws


class batch_stats_eval:
    """Context: evaluate with each batch's own statistics, leaving running statistics untouched.

    Puts every BN layer in training mode with track_running_stats off, which both nn.BatchNorm
    and `BatchNorm` read as "use batch statistics, update nothing"; restores both flags after.
    Ghost BN normalizes each batch whole here (`GhostBatchNorm.whole_batch`), not in virtual batches.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = [m for m in model.modules() if is_batch_norm(m)]
        self.ghosts = [m for m in self.layers if isinstance(m, GhostBatchNorm)]

    def __enter__(self) -> None:
        self.saved = [(m.training, m.track_running_stats) for m in self.layers]
        for m in self.layers:
            m.training, m.track_running_stats = True, False
        self.saved_whole = [m.whole_batch for m in self.ghosts]
        for m in self.ghosts:
            m.whole_batch = True

    def __exit__(self, *exc: object) -> None:
        for m, (training, track) in zip(self.layers, self.saved, strict=True):
            m.training, m.track_running_stats = training, track
        for m, whole in zip(self.ghosts, self.saved_whole, strict=True):
            m.whole_batch = whole
