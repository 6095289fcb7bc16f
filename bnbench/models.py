"""The three tutorial architectures, built by name; the norm is a factory argument.

Every builder takes (activation, norm, cfg) so one architecture serves all three norms.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from bnbench.config import ModelConfig
from bnbench.norms import NormFactory

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
        nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5),
        norm(16, True),
        act(),
        nn.AvgPool2d(2),
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
