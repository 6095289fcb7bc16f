"""The vocabulary a study and its evidence share: how a cell is named and how a value is written.

A cell's name is the values its study varies, `{'norm.kind': 'none', 'train.lr': 0.1}` ->
`kind=none,lr=0.1`; the sweep names run folders with it and compare and report name seed groups and
table rows with it, so the same runs carry the same name everywhere. No torch, no other bnbench module.
"""

from __future__ import annotations

import re
from typing import Any

UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")


def format_value(value: Any) -> str:
    """A value as it appears in a run name: lists joined by 'x', floats in short form."""
    if isinstance(value, (list, tuple)):
        return "x".join(format_value(v) for v in value)
    if isinstance(value, bool) or value is None:
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def short_keys(keys: list[str]) -> dict[str, str]:
    """Each dotted key's last component, or the full key where two would share one."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last, strict=True)}


def cell_name(values: dict[str, Any]) -> str:
    """{'norm.kind': 'none', 'train.lr': 0.1} -> 'kind=none,lr=0.1'; characters unsafe in a file name
    are escaped as %XX."""
    names = short_keys(list(values))
    text = ",".join(f"{names[k]}={format_value(v)}" for k, v in values.items())
    return UNSAFE.sub(lambda m: "".join(f"%{b:02X}" for b in m.group().encode()), text)
