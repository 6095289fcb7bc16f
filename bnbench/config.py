"""Run configuration: typed dataclasses, filled with defaults and validated at the edge.

Everything past `load_config` sees a frozen `RunConfig`, never a raw dict.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from bnbench.errors import UsageError

# The names of the registries (models.MODELS, norms.NORMS): one list each, here, because the config
# is validated without importing torch; the registries check at import that they build exactly these.
MODEL_NAMES = ("mlp", "convnet", "lenet")
NORM_KINDS = ("none", "scratch", "torch", "layer", "torch_layer", "group", "torch_group", "ghost", "renorm")
# The kinds that normalize with the statistics of the batch (so a batch of one example cannot work).
BATCH_STATISTICS_KINDS = ("scratch", "torch", "ghost", "renorm")
ModelName = Literal[MODEL_NAMES]  # type: ignore[valid-type]
Activation = Literal["sigmoid", "relu", "tanh"]
NormKind = Literal[NORM_KINDS]  # type: ignore[valid-type]
Dataset = Literal["mnist", "fashion_mnist", "synthetic"]

FLOAT_LITERAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")

# Keys that also take a norm or model from outside bnbench (plugins.py): key -> what it names.
PLUGGABLE = {"norm.kind": "norm", "model.name": "model"}

# Activation each architecture uses in its tutorial when the config names none.
DEFAULT_ACTIVATION: dict[str, str] = {"mlp": "relu", "convnet": "relu", "lenet": "sigmoid"}


def _range(low: float | None = None, high: float | None = None, *, open_low: bool = False) -> dict:
    return {"low": low, "high": high, "open_low": open_low}


@dataclass(frozen=True)
class ModelConfig:
    name: ModelName = "lenet"
    activation: Activation | None = None  # None: the architecture's default (see DEFAULT_ACTIVATION)
    hidden: tuple[int, ...] = field(default=(100,), metadata=_range(1, 100_000))  # mlp only
    dropout: float = field(default=0.0, metadata=_range(0.0, 0.99))  # after every activation (nn.Dropout)
    residual: bool = False  # mlp only: an identity skip around every hidden block of equal width
    skip_init: bool = False  # with residual: the block's branch scaled by a learnable scalar starting at 0


@dataclass(frozen=True)
class NormConfig:
    kind: NormKind = "torch"
    # PyTorch convention: running = (1 - momentum) * running + momentum * batch. None = cumulative average.
    momentum: float | None = field(default=0.1, metadata=_range(0.0, 1.0))
    eps: float = field(default=1e-5, metadata=_range(0.0, open_low=True))
    affine: bool = True
    track_running_stats: bool = True
    backward: Literal["autograd", "manual"] = "autograd"  # scratch, ghost, layer, group
    position: Literal["before", "after"] = "before"  # the norm before or after the activation
    groups: int = field(default=32, metadata=_range(1))  # group: capped at the largest divisor of the channels
    virtual_batch_size: int = field(default=32, metadata=_range(2))  # ghost
    rmax: float = field(default=3.0, metadata=_range(1.0))  # renorm: r is clipped to [1/rmax, rmax]
    dmax: float = field(default=5.0, metadata=_range(0.0))  # renorm: d is clipped to [-dmax, dmax]
    renorm_warmup: int = field(default=1000, metadata=_range(0))  # renorm: steps over which rmax, dmax open up
    noise: float = field(default=0.0, metadata=_range(0.0))  # > 0: a moving shift and scale after the norm


@dataclass(frozen=True)
class DataConfig:
    dataset: Dataset = "fashion_mnist"
    normalize: bool = False  # True: pixels mapped to [-1, 1]; False: [0, 1]
    train_subset: int | None = field(default=None, metadata=_range(1))
    # > 0: this fraction of the training examples (the last ones) held out as a validation set, never trained on
    val_split: float = field(default=0.0, metadata=_range(0.0, 0.9))


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = field(default=10, metadata=_range(1))
    batch_size: int = field(default=256, metadata=_range(1))
    eval_batch_size: int = field(default=1024, metadata=_range(1))
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = field(default=1.0, metadata=_range(0.0, open_low=True))
    momentum: float = field(default=0.0, metadata=_range(0.0, 1.0))
    weight_decay: float = field(default=0.0, metadata=_range(0.0))
    norm_weight_decay: float | None = field(default=None, metadata=_range(0.0))  # the norms' γ/β; None: weight_decay
    init: Literal["default", "xavier", "kaiming"] = "xavier"
    init_gain: float = field(default=1.0, metadata=_range(0.0, 1000.0, open_low=True))  # x the hidden layers' init
    seed: int = field(default=0, metadata=_range(0, 2**32 - 1))  # numpy seeds no more
    log_every: int | None = field(default=None, metadata=_range(1))  # None: about 20 points per epoch
    eval_bn: Literal["running", "batch"] = "running"
    eval_order: Literal["stored", "shuffled", "class_sorted"] = "stored"  # the test batches' makeup (train.py)
    on_nan: Literal["stop", "continue"] = "stop"
    checkpoint_every: int = field(default=1, metadata=_range(1))
    compile: bool = False
    accumulate: int = field(default=1, metadata=_range(1))  # micro-batches of batch_size / accumulate per step
    precise_bn: int | None = field(default=None, metadata=_range(1))  # batches for exact running statistics
    diagnostics: bool = False  # record what the norm does inside the network (diagnostics.csv)
    trainable: Literal["all", "norm", "norm_output", "random", "all_but_output"] = "all"  # which train (train.py)
    schedule: Literal["constant", "exponential", "cosine"] = "constant"  # the learning rate over steps
    lr_factor: float = field(default=1.0, metadata=_range(0.0, 2.0, open_low=True))  # exponential: lr *= this per step
    diag_every: int | None = field(default=None, metadata=_range(1))  # steps; None: about 10 points per epoch
    probe_size: int = field(default=256, metadata=_range(2))  # examples in the fixed diagnostic probe batch
    landscape_steps: tuple[float, ...] = field(default=(0.25, 0.5, 1.0, 2.0, 4.0),
                                           metadata=_range(0.0, 1000.0, open_low=True))  # fmt: skip
    # float32; bfloat16: torch.autocast (CPU, CUDA); float16: autocast and a grad scaler (CUDA only; train.py)
    precision: Literal["float32", "bfloat16", "float16"] = "float32"


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    model: ModelConfig = ModelConfig()
    norm: NormConfig = NormConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def with_seed(self, seed: int) -> RunConfig:
        return dataclasses.replace(self, train=dataclasses.replace(self.train, seed=seed))

    def with_name(self, name: str) -> RunConfig:
        return dataclasses.replace(self, name=name)


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively, so the dict dumps as plain YAML/JSON."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class ConfigError(UsageError):
    def __init__(self, source: str, key: str, problem: str) -> None:
        self.key = key
        super().__init__(f"{source}: {key}: {problem}" if key else f"{source}: {problem}")


def shorten(text: str, limit: int = 60) -> str:
    """Never a value longer than a line in a message: the start, then its length."""
    return text if len(text) <= limit else f"{text[: limit - 20]}... ({len(text):,} characters)"


def _describe(value: Any) -> str:
    return f"{shorten(repr(value))} ({type(value).__name__})"


def _check_value(value: Any, hint: Any, meta: dict, key: str, source: str) -> Any:
    """Return `value` converted to the field's type, or raise ConfigError naming `key`."""
    fail = lambda problem: ConfigError(source, key, problem)  # noqa: E731
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check_value(value, inner, meta, key, source)
    if origin is Literal:
        if key in PLUGGABLE and isinstance(value, str) and value not in args:
            from bnbench import plugins  # no torch: the user's module is imported by resolve, below

            if plugins.is_import_path(value) or value in plugins.entry_points(PLUGGABLE[key]):
                return value  # resolved (imported and checked) once the whole config is read
            raise fail(f"{shorten(repr(value))} is not one of {', '.join(args)} (or a module:attribute import path, "
                       "see docs/norms.md)")  # fmt: skip
        if value not in args:
            raise fail(f"{shorten(repr(value))} is not one of {', '.join(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or not value:
            raise fail(f"expected a non-empty list, got {_describe(value)}")
        return tuple(_check_value(v, args[0], meta, f"{key}[{i}]", source) for i, v in enumerate(value))
    if hint is bool:
        if not isinstance(value, bool):
            raise fail(f"expected true or false, got {_describe(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise fail(f"expected an integer, got {_describe(value)}")
    elif hint is float:
        if isinstance(value, str) and FLOAT_LITERAL.fullmatch(value.strip()):
            value = float(value)  # PyYAML (YAML 1.1) reads 1e-3 as a string; users mean the number
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail(f"expected a number, got {_describe(value)}")
        value = float(value)
        if not math.isfinite(value):  # NaN passes every range check; it only ever trains to garbage
            raise fail(f"expected a finite number, got {value!r}")
    elif hint is str:
        if not isinstance(value, str) or not value:
            raise fail(f"expected a non-empty string, got {_describe(value)}")
        return value
    low, high = meta.get("low"), meta.get("high")
    if low is not None and (value <= low if meta.get("open_low") else value < low):
        raise fail(f"must be {'>' if meta.get('open_low') else '>='} {low:g}, got {value!r}")
    if high is not None and value > high:
        raise fail(f"must be <= {high:g}, got {value!r}")
    return value


def _unknown_key(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(valid)})"
    return f"unknown key{hint}"


def _build(cls: type, raw: Any, prefix: str, source_of: typing.Callable[[str], str]) -> Any:
    """Build dataclass `cls` from `raw`, checking every key; `source_of(key)` names where a key came from."""
    hints = typing.get_type_hints(cls)
    if not isinstance(raw, dict):
        raise ConfigError(source_of(prefix), prefix, f"expected a mapping, got {_describe(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            full = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(source_of(full), full, _unknown_key(str(key), list(fields)))
    values = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        full = f"{prefix}.{name}" if prefix else name
        if dataclasses.is_dataclass(hints[name]):
            values[name] = _build(hints[name], raw[name], full, source_of)
        else:
            values[name] = _check_value(raw[name], hints[name], dict(f.metadata), full, source_of(full))
    return cls(**values)


def _not_a_file(path: Path) -> str:
    """Why `path` cannot be read as a config: say what it is."""
    import stat

    try:
        mode = path.stat().st_mode
    except RuntimeError:  # Python < 3.13 reports a symlink loop so
        return "a symbolic link that loops; not a config file"
    except OSError as exc:
        if path.is_symlink():
            return f"a symbolic link to nothing usable ({exc.strerror}); not a config file"
        return "no such config file"
    if stat.S_ISDIR(mode):
        return "a directory, not a config file (give the YAML file inside it)"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe), not a config file"
    return "not a regular file, so not a config file"


SHIPPED_CONFIGS = Path(__file__).resolve().parent / "configs"  # in the package: usable after a plain pip install
MAX_NAME_BYTES = 200
MAX_YAML_NODES = 10_000  # a config has ~50; an alias bomb expands to billions


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes in the document once every alias is expanded (shared nodes counted each time they are used)."""
    if id(node) not in memo:
        memo[id(node)] = 1  # a node that refers to itself counts once, not forever
        children = node.value if isinstance(node.value, list) else []
        items = [c for pair in children for c in pair] if isinstance(node, yaml.MappingNode) else children
        memo[id(node)] = 1 + sum(_expanded_size(c, memo) for c in items)
    return memo[id(node)]


class StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in one mapping is an error (PyYAML keeps the last
    value silently, so `train:` twice would drop the first section's settings), and a document that
    expands, through aliases, beyond MAX_YAML_NODES is refused before it is built."""

    def compose_document(self) -> yaml.Node:
        node = super().compose_document()
        if node is not None and _expanded_size(node, {}) > MAX_YAML_NODES:
            raise yaml.YAMLError(f"expands beyond {MAX_YAML_NODES:,} values (aliases that multiply); not a config")
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )  # fmt: skip
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, source: str) -> Any:
    """YAML text through StrictLoader; any problem is one UsageError naming `source` and the place."""
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or (str(exc) if type(exc) is yaml.YAMLError else "invalid YAML")
        raise UsageError(f"{source}: malformed YAML{where}: {problem}") from None
    except RecursionError:
        raise UsageError(f"{source}: nested too deeply to be a config") from None


def shipped_names(folder: Path = SHIPPED_CONFIGS) -> list[str]:
    """The names of the YAML files shipped in `folder` (configs, or configs/studies)."""
    return sorted(p.stem for p in folder.glob("*.yaml"))


def shipped_or_given(given: Path, folder: Path = SHIPPED_CONFIGS) -> Path:
    """`given`, or the file shipped in `folder` under that name (`lenet_bn`) when no such file is here."""
    shipped = folder / f"{given.name}.yaml"
    if not given.exists() and not given.is_symlink() and given.parent == Path(".") and shipped.is_file():
        return shipped
    return given


def shipped_configs() -> list[str]:
    return shipped_names(SHIPPED_CONFIGS)


def config_path(given: Path) -> Path:
    """A config file, or the name of a shipped one (`lenet_bn`) when no such file is here."""
    return shipped_or_given(given, SHIPPED_CONFIGS)


def _read_yaml(path: Path) -> dict:
    source = str(path)
    if not path.is_file():
        hint = " or shipped config (`bnbench config list` names them)" if path.parent == Path(".") else ""
        raise UsageError(f"{source}: {_not_a_file(path)}{hint if not path.exists() else ''}")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{source}: cannot read: {exc}") from None
    raw = parse_yaml(text, source)
    if raw is None:
        raise UsageError(f"{source}: the file is empty; a config is a YAML mapping (see configs/)")
    if not isinstance(raw, dict):
        raise UsageError(f"{source}: a config must be a YAML mapping of keys, got a {type(raw).__name__}")
    return raw


def parse_override(text: str, option: str | None = None) -> tuple[list[str], Any]:
    """'train.lr=0.5' -> (['train', 'lr'], 0.5); the value is parsed as YAML. `option` names where the text
    came from in messages (default `--set TEXT`)."""
    where = option or f"--set {text}"
    key, sep, value_text = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"{where}: expected dotted.key=value, e.g. --set train.lr=0.5")
    value = parse_yaml(value_text, option or f"--set {shorten(text)}") if value_text.strip() else None
    path = key.strip().split(".")
    cls: Any = RunConfig
    for depth, part in enumerate(path):
        if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
            raise UsageError(f"{where}: '{'.'.join(path[:depth])}' has no sub-keys")
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            full = [k for k in dotted_keys() if k.rsplit(".", 1)[-1] == part]
            if full and depth == 0:  # `lr` for `train.lr`: name the full key
                problem = f"unknown key (did you mean {' or '.join(full)}?)"
            else:
                problem = _unknown_key(part, names)
            raise UsageError(f"{where}: '{'.'.join(path[: depth + 1])}': {problem}")
        cls = typing.get_type_hints(cls)[part]
    if dataclasses.is_dataclass(cls):
        raise UsageError(f"{where}: '{key}' is a section; set one of its keys, e.g. {key}.<key>=...")
    return path, value


def dotted_keys(cls: type | None = None, prefix: str = "") -> list[str]:
    """Every leaf key of a config, dotted: train.lr, norm.kind, ..."""
    cls = cls or RunConfig
    hints = typing.get_type_hints(cls)
    keys = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            keys += dotted_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def load_config(
    path: Path | None,
    overrides: list[str] = (),
    base: RunConfig | None = None,
    named: typing.Callable[[str], str] | None = None,
) -> RunConfig:
    """Read `path` (or start from `base`), merge `--set` overrides, default-fill and validate. `named(text)`
    says where an override came from in messages (default `--set TEXT`): a study's matrix, a --grid."""
    named = named or (lambda text: f"--set {text}")
    path = config_path(path) if path is not None else None
    raw = _read_yaml(path) if path is not None else (base.to_dict() if base else {})
    parsed = [(text, *parse_override(text, named(text))) for text in overrides]
    override_of: dict[str, str] = {}
    for text, keys, value in parsed:
        node = raw
        for part in keys[:-1]:
            if not isinstance(node.get(part), dict):
                node[part] = {}
            node = node[part]
        node[keys[-1]] = value
        override_of[".".join(keys)] = text
    file_source = str(path) if path is not None else "config"

    def source_of(key: str) -> str:
        for k, text in override_of.items():
            if key == k or key.startswith(k + "["):
                return named(text)
        return file_source

    raw.setdefault("name", path.stem if path is not None else "run")
    cfg: RunConfig = _build(RunConfig, raw, "", source_of)
    for key, value in (("model.name", cfg.model.name), ("norm.kind", cfg.norm.kind)):
        if value not in MODEL_NAMES + NORM_KINDS:  # a plugin: imported and its signature checked, now
            from bnbench import plugins

            plugins.resolve(value, PLUGGABLE[key], f"{source_of(key)}: {key}")
    if cfg.model.activation is None:
        model = dataclasses.replace(cfg.model, activation=DEFAULT_ACTIVATION.get(cfg.model.name, "relu"))
        cfg = dataclasses.replace(cfg, model=model)
    if "/" in cfg.name or cfg.name.startswith(".") or any(ord(c) < 32 or ord(c) == 127 for c in cfg.name):
        raise ConfigError(source_of("name"), "name", f"{shorten(repr(cfg.name))} cannot be a directory name")
    if len(cfg.name.encode()) > MAX_NAME_BYTES:  # file systems allow 255; leave room for -2, -s4, ...
        raise ConfigError(source_of("name"), "name", f"{shorten(repr(cfg.name))}: longer than {MAX_NAME_BYTES} bytes")
    _check_combinations(cfg, source_of)
    return cfg


def flat(config: dict, prefix: str = "") -> dict[str, object]:
    """{'train': {'lr': 1.0}} -> {'train.lr': 1.0}; lists become tuples so values compare and hash."""
    out: dict[str, object] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out


def check_keys(raw: Any, keys: tuple[str, ...], where: str, expected: str = "") -> dict:
    """`raw` as a mapping of known keys only, or one UsageError naming the first unknown key."""
    if not isinstance(raw, dict):
        raise UsageError(f"{where}: expected {expected or 'a mapping with ' + ', '.join(keys)}")
    unknown = [k for k in raw if k not in keys]
    if unknown:
        raise UsageError(f"{where}: {unknown[0]}: {_unknown_key(str(unknown[0]), list(keys))}")
    return raw


def convention_warnings(configs: typing.Iterable[RunConfig]) -> list[str]:
    """Momentum values that read like another framework's convention, one line per kind of mistake over all
    `configs` (nothing is changed: the runs train as configured). PyTorch's update is
    running = (1 - momentum) * running + momentum * batch; TF/Keras write the weight of the old value
    (0.9, 0.99), so their 0.99 is PyTorch's 0.01. Only for norms whose eval mode uses running statistics."""
    frozen, fast = set(), set()
    for cfg in configs:
        nc = cfg.norm
        if nc.kind not in BATCH_STATISTICS_KINDS or not nc.track_running_stats or cfg.train.precise_bn:
            continue
        if nc.momentum is not None and nc.momentum < 1e-6:  # 0, or so small the statistics never move
            frozen.add(nc.momentum)
        elif nc.momentum is not None and nc.momentum > 0.5:
            fast.add(nc.momentum)
    lines = []
    convention = "PyTorch's convention: running = (1 - momentum) * running + momentum * batch"
    if frozen:
        lines.append(
            f"norm.momentum {', '.join(f'{m:g}' for m in sorted(frozen))}: the running statistics stay at their "
            f"initial 0 and 1, and eval mode normalizes with "
            f"them ({convention}; TF/Keras' momentum 0.99 is PyTorch's 0.01, the default 0.1)"
        )
    if fast:
        shown = ", ".join(f"{m:g}" for m in sorted(fast))
        keras = [m for m in sorted(fast) if m < 1]
        hint = f"; TF/Keras' {', '.join(f'{m:g}' for m in keras)} would be PyTorch's " + ", ".join(
            f"{1 - m:.2g}" for m in keras) if keras else ""  # fmt: skip
        lines.append(f"norm.momentum {shown}: the running statistics follow the last batch or two ({convention}{hint})")
    return lines


def _check_combinations(cfg: RunConfig, source_of: typing.Callable[[str], str]) -> None:
    """Rules that involve more than one key."""
    tc, nc = cfg.train, cfg.norm
    if tc.batch_size % tc.accumulate:
        raise ConfigError(
            source_of("train.accumulate"),
            "train.accumulate",
            f"train.batch_size {tc.batch_size} is not divisible into {tc.accumulate} micro-batches",
        )
    batch_stats = nc.kind in BATCH_STATISTICS_KINDS or (nc.kind not in NORM_KINDS and _plugin_batch(nc.kind))
    if batch_stats and tc.batch_size // tc.accumulate < 2:
        raise ConfigError(
            source_of("train.batch_size"),
            "train.batch_size",
            f"{nc.kind} normalizes with batch statistics, which need at least 2 examples per "
            f"{'micro-batch' if tc.accumulate > 1 else 'batch'}; got {tc.batch_size // tc.accumulate}",
        )
    if batch_stats and tc.eval_batch_size < 2 and tc.eval_bn == "batch":  # running: the extra column stays empty
        raise ConfigError(
            source_of("train.eval_batch_size"),
            "train.eval_batch_size",
            f"{nc.kind} with train.eval_bn batch evaluates with each test batch's statistics, which need at least "
            "2 examples",
        )
    if nc.kind == "renorm" and not nc.track_running_stats:
        raise ConfigError(
            source_of("norm.track_running_stats"),
            "norm.track_running_stats",
            "renorm corrects batch statistics towards the running ones, so it needs them (true)",
        )
    if nc.kind in BATCH_STATISTICS_KINDS and not nc.track_running_stats:
        if tc.precise_bn:
            raise ConfigError(
                source_of("train.precise_bn"),
                "train.precise_bn",
                "norm.track_running_stats is false: there are no running statistics to make precise",
            )
        if tc.eval_bn == "running":
            raise ConfigError(
                source_of("train.eval_bn"),
                "train.eval_bn",
                "norm.track_running_stats is false: there are no running statistics, so evaluation uses each "
                "test batch's own (as nn.BatchNorm does); say so with train.eval_bn: batch",
            )
    if tc.trainable in ("norm", "norm_output", "random") and (nc.kind == "none" or not nc.affine):
        raise ConfigError(
            source_of("train.trainable"),
            "train.trainable",
            f"{tc.trainable} trains the norms' scale and shift (or as many others), so it needs a norm with "
            f"them; norm.kind {nc.kind}, norm.affine {str(nc.affine).lower()} has none",
        )
    if tc.lr_factor != 1.0 and tc.schedule != "exponential":
        raise ConfigError(
            source_of("train.lr_factor"),
            "train.lr_factor",
            f"train.lr_factor multiplies the learning rate after every step of an exponential schedule; "
            f"train.schedule is {tc.schedule}",
        )
    if tc.trainable == "random" and tc.weight_decay:
        raise ConfigError(
            source_of("train.weight_decay"),
            "train.weight_decay",
            "train.trainable random freezes values by masking their gradients; weight decay would still move them",
        )
    mc = cfg.model
    if (mc.residual or mc.skip_init) and mc.name != "mlp":
        key = "model.residual" if mc.residual else "model.skip_init"
        raise ConfigError(source_of(key), key, f"residual blocks are built for the mlp only, not {mc.name}")
    if mc.skip_init and not mc.residual:
        raise ConfigError(source_of("model.skip_init"), "model.skip_init",
                          "scales the residual branch, so it needs model.residual: true")  # fmt: skip
    if mc.residual and not any(a == b for a, b in zip(mc.hidden, mc.hidden[1:], strict=False)):
        why = ("a skip goes around a block of the same width: give model.hidden two neighbouring layers of one width"
               f" (got {list(mc.hidden)})")  # fmt: skip
        raise ConfigError(source_of("model.residual"), "model.residual", why)
    if cfg.data.val_split and cfg.data.train_subset is not None and int(cfg.data.train_subset * cfg.data.val_split) < 1:
        raise ConfigError(source_of("data.val_split"), "data.val_split",
                          f"holds out no example of data.train_subset {cfg.data.train_subset}")  # fmt: skip
    if nc.kind == "renorm" and nc.backward == "manual":
        raise ConfigError(source_of("norm.backward"), "norm.backward", "renorm has no manual backward; use autograd")


def _plugin_batch(kind: str) -> bool:
    from bnbench import plugins

    return plugins.uses_batch_statistics(kind)


def config_from_dict(raw: dict, source: str) -> RunConfig:
    """Rebuild a saved (resolved) config, e.g. a run directory's config.yaml."""
    return _build(RunConfig, raw, "", lambda key: source)
