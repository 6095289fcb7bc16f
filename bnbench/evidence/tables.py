"""Terminal tables that never split a number or a word: every column keeps its lines (a cell may hold
several); when a table is wider than the terminal, its first column (the names) folds at a quarter of the
width, then the incidental columns a table names are dropped first, then columns from the right (the first
stays), and a caption names them; `--wide` keeps them all. No torch here."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:  # only for the hint: `bnbench --help` does not import pandas
    import pandas as pd

FIGURE = r"[-+]?[\d,.]+(e[-+]?\d+)?(x|%| s)?( ± [\d.,e+-]+)?( \([^)]*\))?( \[[^\]]*\])?"
# A figure, figures joined by " / " or a dash (ranges), or a lone dash for "none".
NUMBER = re.compile(rf"^{FIGURE}(( / |–){FIGURE})*$|^[-–]( \([^)]*\))?$")


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


def _layout(header: list[str], rows: list[list[str]], width: int | None, wide: bool) -> tuple[list[str], list[int]]:
    """The headers as drawn and each column's width with its borders. On a terminal too narrow for the
    table, a header longer than its cells wraps at its spaces and the first column folds at a quarter of the
    width: both before any column is hidden."""
    cells = [_longest([r[i] for r in rows]) for i in range(len(header))]
    headers = list(header)
    natural = [max(_longest([h]), c) + 3 for h, c in zip(headers, cells, strict=True)]
    if wide or width is None or sum(natural) + 1 <= width:
        return headers, natural
    headers = [_wrap(h, c) for h, c in zip(headers, cells, strict=True)]
    natural = [max(_longest([h]), c) + 3 for h, c in zip(headers, cells, strict=True)]
    cap = _first_cap(width, wide)
    if natural and cap is not None:
        natural[0] = min(natural[0], cap + 3)
    return headers, natural


def shown_columns(header: list[str], rows: list[list[str]], width: int | None, wide: bool = False,
                  drop_first: list[str] | tuple[str, ...] = ()) -> list[int]:  # fmt: skip
    """The indices of the columns that fit `width` characters: the columns named in `drop_first` go first,
    in that order, then the others from the right; the first column always stays. All of them when `wide`
    or off a terminal (`width` None)."""
    columns = list(range(len(header)))
    natural = _layout(header, rows, width, wide)[1]
    order = [header.index(h) for h in drop_first if h in header[1:]]
    order += [i for i in reversed(columns[1:]) if i not in order]
    while not wide and width is not None and len(columns) > 1 and sum(natural[i] for i in columns) + 1 > width:
        columns.remove(order.pop(0))
    return columns


def fitted(title: str, header: list[str], rows: list[list[str]], width: int | None, wide: bool = False,
           drop_first: list[str] | tuple[str, ...] = ()) -> Table:  # fmt: skip
    """A Rich table of `rows` (strings) that fits `width` characters unless `wide`; when it does not, long
    headers wrap and the first column folds (`_layout`), then the columns in `drop_first` are hidden first
    (the incidental ones), then from the right, and a caption names them."""
    columns = shown_columns(header, rows, width, wide, drop_first)
    hidden = [header[i] for i in range(len(header)) if i not in columns]
    caption = (f"{len(hidden)} column{'s' if len(hidden) > 1 else ''} hidden to fit the terminal: {', '.join(hidden)} "
               "(--wide shows them)")  # fmt: skip
    # Names and paths are data, never Rich markup: `mlp[bn]` is shown as written.
    table = Table(title=escape(title), title_justify="left", caption=escape(caption) if hidden else None,
                  caption_justify="left")  # fmt: skip
    headers, natural = _layout(header, rows, width, wide)
    for i in columns:
        numeric = is_numeric([r[i] for r in rows])
        folds = i == 0 and natural[0] - 3 < _longest([r[0] for r in rows])
        room = natural[0] - 3 if folds else None
        justify = "right" if numeric else "left"
        table.add_column(escape(headers[i]), no_wrap=not folds, overflow="fold", max_width=room, justify=justify)
    for row in rows:
        table.add_row(*(escape(row[i]) for i in columns))
    return table


def frame_cells(frame: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    return [str(c) for c in frame.columns], [[str(v) for v in r] for r in frame.itertuples(index=False)]


def frame_table(title: str, frame: pd.DataFrame, width: int | None, wide: bool = False) -> Table:
    """`fitted` of a frame; `frame.attrs["drop_first"]` names the columns to hide first."""
    header, rows = frame_cells(frame)
    return fitted(title, header, rows, width, wide, frame.attrs.get("drop_first", ()))
