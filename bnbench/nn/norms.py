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
        self.running_mean.lerp_(mean, factor)
        self.running_var.lerp_(unbiased_var, factor)


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
        dims = _reduce_dims(x)
        shape = (1, -1) + (1,) * (x.dim() - 2)
        mean, centered, var = _centered_stats(x, dims)
        inv_std = torch.rsqrt(var + self.eps)
        with torch.no_grad():
            # Tensors, not Python numbers: reading num_batches_tracked on the host would sync a GPU.
            opened = (self.num_batches_tracked / self.warmup).clamp(max=1.0) if self.warmup else torch.ones(())
            rmax = 1 + (self.rmax - 1) * opened.to(x.dtype)
            dmax = self.dmax * opened.to(x.dtype)
            running_inv_std = torch.rsqrt(self.running_var + self.eps).view(shape)
            r = torch.minimum(torch.maximum(running_inv_std / inv_std, 1 / rmax), rmax)
            d = torch.minimum(torch.maximum((mean - self.running_mean.view(shape)) * running_inv_std, -dmax), dmax)
        y = centered * (inv_std * r) + d
        if self.weight is not None:
            y = torch.addcmul(self.bias.view(shape), y, self.weight.view(shape))
        self._update_running(mean.detach().flatten(), var.detach().flatten(), x.numel() // x.shape[1])
        return y


class _NormalizeFn(torch.autograd.Function):
    """x_hat = (x - mean) / sqrt(var + eps) over `dims`, with the closed-form backward of the module
    docstring (without gamma): dx = inv_std * (g - mean(g) - x_hat * mean(g * x_hat))."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dims: tuple[int, ...], eps: float) -> torch.Tensor:
        _, x_hat, var = _centered_stats(x, dims)
        inv_std = torch.rsqrt(var + eps)
        x_hat.mul_(inv_std)
        ctx.save_for_backward(x_hat, inv_std)
        ctx.dims = dims
        return x_hat

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x_hat, inv_std = ctx.saved_tensors
        buffer = grad * x_hat
        mean_g_xhat = buffer.mean(dim=ctx.dims, keepdim=True)
        mean_g = grad.mean(dim=ctx.dims, keepdim=True)
        dx = torch.mul(x_hat, mean_g_xhat, out=buffer).neg_().add_(grad).sub_(mean_g).mul_(inv_std)
        return dx, None, None


def _normalize(x: torch.Tensor, dims: tuple[int, ...], eps: float, backward: str) -> torch.Tensor:
    if backward == "manual":
        return _NormalizeFn.apply(x, dims, eps)
    _, centered, var = _centered_stats(x, dims)
    return centered * torch.rsqrt(var + eps)


class LayerNorm(nn.Module):
    """Layer Normalization over all features of one example ((C,) or (C, H, W)), equal to
    nn.LayerNorm(shape): biased variance, elementwise affine of the features' shape."""

    def __init__(self, shape: tuple[int, ...], eps: float = 1e-5, affine: bool = True, backward: str = "autograd"):
        super().__init__()
        self.shape, self.eps, self.backward = tuple(shape), eps, backward
        self.weight = nn.Parameter(torch.ones(self.shape)) if affine else None
        self.bias = nn.Parameter(torch.zeros(self.shape)) if affine else None

    def extra_repr(self) -> str:
        return f"{self.shape}, eps={self.eps}, affine={self.weight is not None}, backward={self.backward}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = _normalize(x, tuple(range(-len(self.shape), 0)), self.eps, self.backward)
        return y if self.weight is None else torch.addcmul(self.bias, y, self.weight)


class GroupNorm(nn.Module):
    """Group Normalization: each example's channels in `num_groups` groups, each group (with its H x W)
    normalized on its own; per-channel affine. Equal to nn.GroupNorm. One group is LayerNorm over
    (C, H, W) with per-channel affine; one group per channel is Instance Normalization."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 backward: str = "autograd") -> None:  # fmt: skip
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"{num_channels} channels do not split into {num_groups} groups")
        self.num_groups, self.num_channels, self.eps, self.backward = num_groups, num_channels, eps, backward
        self.weight = nn.Parameter(torch.ones(num_channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_channels)) if affine else None

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.weight is not None}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grouped = x.reshape(x.shape[0], self.num_groups, -1)
        y = _normalize(grouped, (2,), self.eps, self.backward).view(x.shape)
        if self.weight is None:
            return y
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return torch.addcmul(self.bias.view(shape), y, self.weight.view(shape))


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
    return lambda cfg, shape: plugin(shape, cfg)


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
