"""Norms and models from outside bnbench: `norm.kind: mypkg.norms:MyNorm` / `model.name: mypkg.nets:MyNet`
(a `module:attribute` import path), or a name an installed package registers in the `bnbench.norms` /
`bnbench.models` entry-point groups. Resolved when a config is validated, so a missing module, attribute
or wrong signature is one line before any run starts. The contracts (docs/norms.md):

    norm:  Attr(features_shape: tuple[int, ...], cfg: NormConfig) -> nn.Module     # (C,) or (C, H, W)
    model: Attr(block, cfg: ModelConfig) -> nn.Module   # block(features_shape) -> norm + activation

A norm that normalizes with batch statistics says so with a class attribute `uses_batch_statistics = True`
(bnbench then refuses batches of one for it); a subclass of nn.BatchNorm or bnbench's BatchNorm is also
treated as BN by precise statistics and batch-statistics evaluation.

Reading results (`compare`, `ls`, `report`, `plot`, `export`) imports nothing: inside `no_imports()` a
recorded config that names a plugin is taken as written, and no module it names is ever imported (a run
folder someone sent is data, never code). Only `run`, `sweep`, `check` and `bench` import plugins, and only
they put the current folder on the import path.

No torch here: importing the user's module imports it.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from bnbench.errors import UsageError

GROUPS = {"norm": "bnbench.norms", "model": "bnbench.models"}
ARGUMENTS = {"norm": "(features_shape, cfg)", "model": "(block, cfg)"}


def entry_points(what: str) -> dict[str, str]:
    """name -> 'module:attr' registered by installed packages for `what` (norm or model). A package whose
    entry_points.txt cannot be read is skipped with one warning (it is another package's fault)."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        try:
            points = dist.entry_points.select(group=GROUPS[what])
        except Exception as exc:  # noqa: BLE001 - a malformed entry_points.txt of another package
            name = (dist.metadata or {}).get("Name") or "a package"
            print(f"warning: {name}: its entry_points.txt cannot be read ({type(exc).__name__}); skipped",
                  file=sys.stderr)  # fmt: skip
            continue
        found.update((ep.name, ep.value) for ep in points)
    return found


def is_import_path(text: str) -> bool:
    return ":" in text


_IMPORTS_REFUSED: list[bool] = []  # non-empty inside no_imports()


@contextmanager
def no_imports() -> Iterator[None]:
    """While reading recorded results: `resolve` imports nothing and returns a stand-in that refuses to be
    called; `uses_batch_statistics` is False (the recorded files are what was measured)."""
    _IMPORTS_REFUSED.append(True)
    try:
        yield
    finally:
        _IMPORTS_REFUSED.pop()


def _not_imported(spec: str) -> Callable:
    def refuse(*args: object, **kwargs: object) -> None:
        raise UsageError(f"{spec}: not imported while reading recorded results")

    return refuse


def resolve(spec: str, what: str, source: str = "") -> Callable:
    """The callable `spec` names (an import path or an entry-point name), checked to take the contract's
    two arguments; one UsageError otherwise."""
    where = f"{source}: " if source else ""
    if _IMPORTS_REFUSED:
        return _not_imported(spec)
    path = spec if is_import_path(spec) else entry_points(what).get(spec)
    if path is None:
        raise UsageError(f"{where}{spec!r}: not a registered {what} and not an import path (module:attribute)")
    module_name, _, attribute = path.partition(":")
    try:
        module = _import(module_name)
    except ImportError as exc:
        raise UsageError(f"{where}{spec}: cannot import {module_name} ({exc})") from None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's module failed while importing: one line
        raise UsageError(f"{where}{spec}: importing {module_name} failed ({type(exc).__name__}: {exc})") from None
    target = module
    for part in attribute.split("."):
        if not part or not hasattr(target, part):
            raise UsageError(f"{where}{spec}: {module_name} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise UsageError(f"{where}{spec}: {attribute} is not callable; a {what} is called as {ARGUMENTS[what]}")
    try:
        inspect.signature(target).bind(None, None)
    except TypeError:
        raise UsageError(
            f"{where}{spec}: {attribute} cannot be called with {ARGUMENTS[what]} (see the contract in docs/norms.md)"
        ) from None
    except ValueError:  # a builtin without a signature: trust it
        pass
    return target


def _import(name: str):
    """Import as Python would; a module in the current folder too (the `bnbench` script, unlike
    `python -m`, does not put it on the path). The folder is added once, so spawned workers inherit it."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        here = str(Path.cwd())
        if exc.name != name.split(".")[0] or here in sys.path:
            raise
        sys.path.append(here)
        return importlib.import_module(name)


def uses_batch_statistics(spec: str, what: str = "norm") -> bool:
    if _IMPORTS_REFUSED:
        return False
    return bool(getattr(resolve(spec, what), "uses_batch_statistics", False))


class PluginError(UsageError):
    """A plugin norm or model failed when called (raised, exited, or gave back something not a module)."""


def call(plugin: Callable, spec: str, what: str, *args: object) -> object:
    """`plugin(*args)`, where an exception or a `sys.exit` inside it becomes one PluginError naming it."""
    key = "norm.kind" if what == "norm" else "model.name"
    try:
        return plugin(*args)
    except UsageError:
        raise
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's code failed: one line naming it
        how = f"called sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else f"{type(exc).__name__}: {exc}"
        raise PluginError(f"{key} {spec}: the plugin {what} failed when built ({how})") from None


def built(module: object, spec: str, what: str) -> object:
    """`module` if it is a torch.nn.Module; otherwise one PluginError naming the plugin."""
    import torch.nn as nn

    if not isinstance(module, nn.Module):
        key = "norm.kind" if what == "norm" else "model.name"
        raise PluginError(f"{key} {spec}: the plugin {what} returned a {type(module).__name__}, not a torch.nn.Module")
    return module
