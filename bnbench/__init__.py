"""bnbench: what does Batch Normalization do to training? Experiments from YAML configs.

From Python (docs/python.md): `bnbench.load`, `compare`, `judge`, `run`, `sweep`; bad input raises
`bnbench.InputError`. They are imported on first use (PEP 562), so `import bnbench` and `bnbench --version`
stay light (no torch, no pandas).
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["InputError", "Runs", "compare", "judge", "load", "run", "sweep"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from bnbench import api

        return getattr(api, name)
    raise AttributeError(f"module 'bnbench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
