"""Terminal tables that never split a number or a word: every column keeps its lines (a cell may hold
several); when a table is wider than the terminal, its first column (the names) folds at a quarter of the
width, then the incidental columns a table names are dropped first, then columns from the right (the first
stays), and a caption names them; `--wide` keeps them all. No torch here."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:  # only for the hint: `bnbench --help` does not import pandas
    import pandas as pd

FIGURE = r"[-+]?[\d,.]+(e[-+]?\d+)?(x|%| s)?( (±|\+/-) [\d.,e+-]+)?( \([^)]*\))?( \[[^\]]*\])?"  # ± or ASCII +/-
# A figure, figures joined by " / " or a dash (ranges), or a lone dash for "none".
NUMBER = re.compile(rf"^{FIGURE}(( / |–){FIGURE})*$|^[-–]( \([^)]*\))?$")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0 and C1 control characters but tab and newline


def without_controls(text: str) -> str:
    """`text` with its control characters written as `\\xNN`: a name from a folder someone sent (an escape
    sequence in it) is shown, never sent to the terminal as a command."""
    return CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


ESTIMATE = re.compile(r"^[-+]?[\d.,]+(e[-+]?\d+)? \[")  # an estimate and its interval: `0.0169 [-0.0327, 0.0666]`


def is_numeric(cells: list[str]) -> bool:
    """Every cell a figure (a number, a mean ± std, a ratio, '-'): the column is right-aligned."""
    filled = [c.strip() for c in cells if c.strip()]
    return bool(filled) and all(NUMBER.match(c) for c in filled)


def _first_cap(width: int | None, wide: bool) -> int | None:
    """The most a table's first column (its names) takes of a narrow terminal: longer names fold onto more
    lines rather than push the answer off the screen (a quarter of the width)."""
    return None if wide or width is None else max(12, width // 4)


def _longest(cells: list[str]) -> int:
    return max([len(line) for cell in cells for line in cell.split("\n")] or [0])


def _wrap(text: str, room: int) -> str:
    """A header on as many lines as it needs to be no wider than `room` (or its longest word)."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and len(lines[-1]) + 1 + len(word) <= room:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return "\n".join(lines)


Plan = tuple[list[int], list[str], list[list[str]], list[int]]  # columns shown, headers, rows, widths


def _plan(header: list[str], rows: list[list[str]], width: int | None, wide: bool,
          drop_first: list[str] | tuple[str, ...]) -> Plan:  # fmt: skip
    """Which columns a terminal of `width` shows, with the headers and rows as drawn and each column's width
    with its borders. Too narrow for the whole table: first the columns named in `drop_first` are hidden
    (the incidental ones), then the table is made compact (an interval goes on the line below its
    estimate, a header longer than its cells wraps at its spaces, the first column folds at a quarter of
    the width), then columns are hidden from the right; the first column always stays."""
    columns = list(range(len(header)))

    def widths(headers: list[str], rows: list[list[str]]) -> list[int]:
        return [max(_longest([h]), _longest([r[i] for r in rows])) + 3 for i, h in enumerate(headers)]

    def fits() -> bool:
        return wide or width is None or sum(natural[i] for i in columns) + 1 <= width

    headers, natural = list(header), widths(header, rows)
    first = [header.index(h) for h in drop_first if h in header[1:]]
    while not fits() and first:
        columns.remove(first.pop(0))
    if not fits():
        rows = [[cell.replace(" [", "\n[") if ESTIMATE.match(cell) else cell for cell in row] for row in rows]
        headers = [_wrap(h, _longest([r[i] for r in rows])) for i, h in enumerate(headers)]
        natural = widths(headers, rows)
        natural[0] = min(natural[0], _first_cap(width, wide) + 3)
    rest = [i for i in reversed(columns[1:])]
    while not fits() and rest:
        columns.remove(rest.pop(0))
    return columns, headers, rows, natural


def shown_columns(header: list[str], rows: list[list[str]], width: int | None, wide: bool = False,
                  drop_first: list[str] | tuple[str, ...] = ()) -> list[int]:  # fmt: skip
    """The indices of the columns that fit `width` characters (`_plan`). All of them when `wide` or off a
    terminal (`width` None)."""
    return _plan(header, rows, width, wide, drop_first)[0]


def fitted(title: str, header: list[str], rows: list[list[str]], width: int | None, wide: bool = False,
           drop_first: list[str] | tuple[str, ...] = ()) -> Table:  # fmt: skip
    """A Rich table of `rows` (strings) that fits `width` characters unless `wide` (`_plan`: incidental
    columns hidden, then compact, then columns hidden from the right), with a caption naming what it hid."""
    columns, headers, rows, natural = _plan(header, rows, width, wide, drop_first)
    hidden = [header[i] for i in range(len(header)) if i not in columns]
    caption = (f"{len(hidden)} column{'s' if len(hidden) > 1 else ''} hidden to fit the terminal: {', '.join(hidden)} "
               "(--wide shows them)")  # fmt: skip
    # Names and paths are data, never Rich markup: `mlp[bn]` is shown as written.
    table = Table(title=escape(title), title_justify="left", caption=escape(caption) if hidden else None,
                  caption_justify="left")  # fmt: skip
    for i in columns:
        numeric = is_numeric([r[i] for r in rows])
        folds = i == 0 and natural[0] - 3 < _longest([r[0] for r in rows])
        room = natural[0] - 3 if folds else None
        justify = "right" if numeric else "left"
        table.add_column(escape(headers[i]), no_wrap=not folds, overflow="fold", max_width=room, justify=justify)
    for row in rows:
        table.add_row(*(escape(row[i]) for i in columns))
    return table


@dataclass(frozen=True)
class Rows:
    """A table of plain values, a dict per row, its columns in order; no pandas (`bnbench compare` starts
    in half the time without it). `drop_first` names the incidental columns a narrow terminal hides first.
    `frame()` gives a DataFrame for the Python API and plots."""

    columns: tuple[str, ...]
    rows: list[dict] = field(default_factory=list)
    drop_first: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> list:
        return [row.get(name) for row in self.rows]

    def cells(self) -> tuple[list[str], list[list[str]]]:
        """The header and every cell as text (str of each value)."""
        return list(self.columns), [[str(row.get(c)) for c in self.columns] for row in self.rows]

    def frame(self) -> pd.DataFrame:
        import pandas as pd

        return pd.DataFrame(self.rows, columns=list(self.columns))
