"""The three tutorial architectures, built by name; the norm is a factory argument.

Every builder takes (block, cfg): `block(shape)` makes one normalization position (norm and
activation) for features of that shape, so one architecture serves every norm and placement.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bnbench.config import MODEL_NAMES, ModelConfig
from bnbench.nn.norms import NormFactory, ShiftNoise


class _AvgPool2x2Fn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        # Same additions in the same order as PyTorch's kernel, so the result is bit for bit equal.
        return (x[:, :, 0::2, 0::2] + x[:, :, 0::2, 1::2]).add_(x[:, :, 1::2, 0::2]).add_(x[:, :, 1::2, 1::2]).div_(4)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        n, c, h, w = grad.shape
        return (grad / 4)[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)


class AvgPool2x2(nn.Module):
    """nn.AvgPool2d(2) computed from four strided views: the same numbers (tests compare them bit
    for bit), but on the CPU about 2.5x faster than PyTorch's pooling kernel at LeNet's shapes,
    where that kernel took a quarter of the training step."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] % 2 or x.shape[-2] % 2:
            return F.avg_pool2d(x, 2)  # odd sizes: let PyTorch drop the last row or column
        return _AvgPool2x2Fn.apply(x)


ACTIVATIONS: dict[str, type[nn.Module]] = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}


class NormAct(nn.Module):
    """One normalization position: the norm and the activation, in the configured order. Every model
    names these `norm1`, `norm2`, ... whatever the norm (nn.Identity for none), so runs line up."""

    def __init__(
        self, norm: nn.Module, act: nn.Module, norm_first: bool = True, noise: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.norm, self.act, self.norm_first = norm, act, norm_first
        if noise is not None:  # norm.noise > 0: after the norm, wherever it sits (Santurkar et al.'s noisy BN)
            self.noise = noise

    def extra_repr(self) -> str:
        return "norm, then activation" if self.norm_first else "activation, then norm"

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return self.noise(x) if hasattr(self, "noise") else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self._norm(x)) if self.norm_first else self._norm(self.act(x))


# A builder gets `block(shape)`, which makes the NormAct for features of that shape: (C,) or (C, H, W).
Block = Callable[[tuple[int, ...]], NormAct]
MODELS: dict[str, Callable[[Block, ModelConfig], nn.Sequential]] = {}


def register(name: str) -> Callable:
    def add(builder: Callable[[Block, ModelConfig], nn.Sequential]) -> Callable[[Block, ModelConfig], nn.Sequential]:
        MODELS[name] = builder
        return builder

    return add


@register("mlp")
def mlp(block: Block, cfg: ModelConfig) -> nn.Sequential:
    """784 -> hidden... -> 10; each hidden Linear is followed by a norm position."""
    layers: dict[str, nn.Module] = {"flatten": nn.Flatten()}
    width = 28 * 28
    for i, hidden in enumerate(cfg.hidden, 1):
        layers[f"fc{i}"] = nn.Linear(width, hidden)
        layers[f"norm{i}"] = block((hidden,))
        width = hidden
    layers["out"] = nn.Linear(width, 10)
    return nn.Sequential(OrderedDict(layers))


@register("convnet")
def convnet(block: Block, cfg: ModelConfig) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 6, 3, padding=1),
            norm1=block((6, 28, 28)),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(6, 16, 5),
            norm2=block((16, 10, 10)),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            out=nn.Linear(400, 10),
        )
    )


@register("lenet")
def lenet(block: Block, cfg: ModelConfig) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 6, 5),
            norm1=block((6, 24, 24)),
            pool1=AvgPool2x2(),
            conv2=nn.Conv2d(6, 16, 5),
            norm2=block((16, 8, 8)),
            pool2=AvgPool2x2(),
            flatten=nn.Flatten(),
            fc1=nn.Linear(256, 120),
            norm3=block((120,)),
            fc2=nn.Linear(120, 84),
            norm4=block((84,)),
            out=nn.Linear(84, 10),
        )
    )


if tuple(MODELS) != MODEL_NAMES:
    raise ImportError(f"models.MODELS {tuple(MODELS)} must build exactly config.MODEL_NAMES {MODEL_NAMES}")


def init_weights(model: nn.Module, scheme: str) -> None:
    """'xavier' / 'kaiming': uniform init of Linear and Conv weights (biases keep PyTorch's init)."""
    if scheme == "default":
        return
    fill = nn.init.xavier_uniform_ if scheme == "xavier" else nn.init.kaiming_uniform_
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            fill(module.weight)


def build_model(cfg: ModelConfig, norm: NormFactory, init: str = "default", position: str = "before",
                noise: float = 0.0) -> nn.Module:  # fmt: skip
    """`norm` makes the normalization layer for a features shape; `position`: before or after the activation;
    `noise` > 0 adds ShiftNoise of that strength after every norm."""
    act = ACTIVATIONS[cfg.activation]
    if cfg.name in MODELS:
        builder = MODELS[cfg.name]
    else:  # a plugin model (plugins.py): called like the registered builders
        from bnbench import plugins

        builder = plugins.resolve(cfg.name, "model")

    def block(shape: tuple[int, ...]) -> NormAct:
        return NormAct(norm(shape), act(), position == "before", ShiftNoise(shape[0], noise) if noise > 0 else None)

    if cfg.name in MODELS:
        model = builder(block, cfg)
    else:
        from bnbench import plugins

        model = plugins.built(plugins.call(builder, cfg.name, "model", block, cfg), cfg.name, "model")
    init_weights(model, init)
    return model
