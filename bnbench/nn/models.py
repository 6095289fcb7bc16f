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

from bnbench.config import MODEL_NAMES, ModelConfig, RunConfig
from bnbench.nn.norms import NormFactory, ShiftNoise, make_norm_factory


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
        self, norm: nn.Module, act: nn.Module, norm_first: bool = True, noise: nn.Module | None = None,
        dropout: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__()
        self.norm, self.act, self.norm_first = norm, act, norm_first
        if noise is not None:  # norm.noise > 0: after the norm, wherever it sits (Santurkar et al.'s noisy BN)
            self.noise = noise
        if dropout > 0:  # model.dropout: after the whole position, so the norm always sees undropped features
            self.drop = nn.Dropout(dropout)

    def extra_repr(self) -> str:
        return "norm, then activation" if self.norm_first else "activation, then norm"

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        return self.noise(x) if hasattr(self, "noise") else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self._norm(x)) if self.norm_first else self._norm(self.act(x))
        return self.drop(x) if hasattr(self, "drop") else x


# A builder gets `block(shape)`, which makes the NormAct for features of that shape: (C,) or (C, H, W).
Block = Callable[[tuple[int, ...]], NormAct]
MODELS: dict[str, Callable[[Block, ModelConfig], nn.Module]] = {}


def register(name: str) -> Callable:
    def add(builder: Callable[[Block, ModelConfig], nn.Sequential]) -> Callable[[Block, ModelConfig], nn.Sequential]:
        MODELS[name] = builder
        return builder

    return add


class ResidualMLP(nn.Module):
    """The mlp with identity skips (He et al. 2016): x + norm_act(fc(x)) around every hidden block whose width
    equals its input's (the first block, 784 -> hidden[0], has none). With `skip_init` (De & Smith 2020,
    SkipInit) the branch is scaled by a learnable scalar `skip{i}` that starts at 0, so every block is the
    identity at initialisation. Modules are named as the plain mlp's (fc1, norm1, ..., out)."""

    def __init__(self, block: Block, cfg: ModelConfig) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        width, self.skips = 28 * 28, []
        for i, hidden in enumerate(cfg.hidden, 1):
            self.add_module(f"fc{i}", nn.Linear(width, hidden))
            self.add_module(f"norm{i}", block((hidden,)))
            if hidden == width:
                self.skips.append(i)
                if cfg.skip_init:
                    self.register_parameter(f"skip{i}", nn.Parameter(torch.zeros(())))
            width = hidden
        self.depth = len(cfg.hidden)
        self.out = nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        for i in range(1, self.depth + 1):
            branch = getattr(self, f"norm{i}")(getattr(self, f"fc{i}")(x))
            if i not in self.skips:
                x = branch
            else:
                x = x + (branch * getattr(self, f"skip{i}") if hasattr(self, f"skip{i}") else branch)
        return self.out(x)


@register("mlp")
def mlp(block: Block, cfg: ModelConfig) -> nn.Module:
    """784 -> hidden... -> 10; each hidden Linear is followed by a norm position; `model.residual`: ResidualMLP."""
    if cfg.residual:
        return ResidualMLP(block, cfg)
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


def feeding_layers(model: nn.Module) -> list[nn.Module]:
    """The Linear or Conv layer that feeds each norm position (the last one before it), in order."""
    feeding, out = None, []
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            feeding = module
        elif isinstance(module, NormAct) and feeding is not None and feeding not in out:
            out.append(feeding)
    return out


def init_weights(model: nn.Module, scheme: str, gain: float = 1.0) -> None:
    """'xavier' / 'kaiming': uniform init of Linear and Conv weights (biases keep PyTorch's init); then the
    weights of every layer that feeds a norm position times `gain` (train.init_gain; the output layer keeps its
    init). Ioffe & Szegedy 2015 §3.3: a layer followed by BN is invariant to that scale, BN(aWu) = BN(Wu)."""
    if scheme != "default":
        fill = nn.init.xavier_uniform_ if scheme == "xavier" else nn.init.kaiming_uniform_
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                fill(module.weight)
    if gain != 1.0:
        with torch.no_grad():
            for module in feeding_layers(model):
                module.weight.mul_(gain)


def build_model(cfg: ModelConfig, norm: NormFactory, init: str = "default", position: str = "before",
                noise: float = 0.0, gain: float = 1.0) -> nn.Module:  # fmt: skip
    """`norm` makes the normalization layer for a features shape; `position`: before or after the activation;
    `noise` > 0 adds ShiftNoise of that strength after every norm; `gain` scales the initial weights."""
    act = ACTIVATIONS[cfg.activation]
    if cfg.name in MODELS:
        builder = MODELS[cfg.name]
    else:  # a plugin model (plugins.py): called like the registered builders
        from bnbench import plugins

        builder = plugins.resolve(cfg.name, "model")

    def block(shape: tuple[int, ...]) -> NormAct:
        noisy = ShiftNoise(shape[0], noise) if noise > 0 else None
        return NormAct(norm(shape), act(), position == "before", noisy, cfg.dropout)

    if cfg.name in MODELS:
        model = builder(block, cfg)
    else:
        from bnbench import plugins

        model = plugins.built(plugins.call(builder, cfg.name, "model", block, cfg), cfg.name, "model")
    init_weights(model, init, gain)
    return model


def build_run_model(cfg: RunConfig) -> nn.Module:
    """The model a run config describes, initialised from the current torch seed."""
    return build_model(cfg.model, make_norm_factory(cfg.norm), cfg.train.init, cfg.norm.position, cfg.norm.noise,
                       cfg.train.init_gain)  # fmt: skip
