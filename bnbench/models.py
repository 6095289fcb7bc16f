"""The three tutorial architectures, built by name; the norm is a factory argument.

Every builder takes (activation, norm, cfg) so one architecture serves all three norms.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bnbench.config import ModelConfig
from bnbench.norms import NormFactory


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
MODELS: dict[str, Callable[..., nn.Module]] = {}


def register(name: str) -> Callable:
    def add(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MODELS[name] = builder
        return builder

    return add


@register("mlp")
def mlp(act: Callable[[], nn.Module], norm: NormFactory, cfg: ModelConfig) -> nn.Module:
    """784 -> hidden... -> 10; each hidden Linear is followed by norm, then activation."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = 28 * 28
    for hidden in cfg.hidden:
        layers += [nn.Linear(width, hidden), norm(hidden, False), act()]
        width = hidden
    return nn.Sequential(*layers, nn.Linear(width, 10))


@register("convnet")
def convnet(act: Callable[[], nn.Module], norm: NormFactory, cfg: ModelConfig) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        norm(6, True),
        act(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        norm(16, True),
        act(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(400, 10),
    )


@register("lenet")
def lenet(act: Callable[[], nn.Module], norm: NormFactory, cfg: ModelConfig) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5),
        norm(6, True),
        act(),
        AvgPool2x2(),
        nn.Conv2d(6, 16, 5),
        norm(16, True),
        act(),
        AvgPool2x2(),
        nn.Flatten(),
        nn.Linear(256, 120),
        norm(120, False),
        act(),
        nn.Linear(120, 84),
        norm(84, False),
        act(),
        nn.Linear(84, 10),
    )


def init_weights(model: nn.Module, scheme: str) -> None:
    """'xavier' / 'kaiming': uniform init of Linear and Conv weights (biases keep PyTorch's init)."""
    if scheme == "default":
        return
    fill = nn.init.xavier_uniform_ if scheme == "xavier" else nn.init.kaiming_uniform_
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            fill(module.weight)


def build_model(cfg: ModelConfig, norm: NormFactory, init: str = "default") -> nn.Module:
    model = MODELS[cfg.name](ACTIVATIONS[cfg.activation], norm, cfg)
    init_weights(model, init)
    return model
