"""Terminal tables that never split a number or a word: every column keeps one line per cell; when a
table is wider than the terminal, the incidental columns a table names are dropped first, then columns
from the right (the first stays), and a caption names them; `--wide` keeps them all. No torch here."""

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


def shown_columns(header: list[str], rows: list[list[str]], width: int | None, wide: bool = False,
                  drop_first: list[str] | tuple[str, ...] = ()) -> list[int]:  # fmt: skip
    """The indices of the columns that fit `width` characters: the columns named in `drop_first` go first,
    in that order, then the others from the right; the first column always stays. All of them when `wide`
    or off a terminal (`width` None)."""
    columns = list(range(len(header)))
    natural = [max([len(header[i])] + [len(r[i]) for r in rows]) + 3 for i in columns]
    order = [header.index(h) for h in drop_first if h in header[1:]]
    order += [i for i in reversed(columns[1:]) if i not in order]
    while not wide and width is not None and len(columns) > 1 and sum(natural[i] for i in columns) + 1 > width:
        columns.remove(order.pop(0))
    return columns


def fitted(title: str, header: list[str], rows: list[list[str]], width: int | None, wide: bool = False,
           drop_first: list[str] | tuple[str, ...] = ()) -> Table:  # fmt: skip
    """A Rich table of `rows` (strings) that fits `width` characters unless `wide`; when it does not, the
    columns in `drop_first` are hidden first (the incidental ones), then from the right, and a caption
    names them."""
    columns = shown_columns(header, rows, width, wide, drop_first)
    hidden = [header[i] for i in range(len(header)) if i not in columns]
    caption = (f"{len(hidden)} column{'s' if len(hidden) > 1 else ''} hidden to fit the terminal: {', '.join(hidden)} "
               "(--wide shows them)")  # fmt: skip
    # Names and paths are data, never Rich markup: `mlp[bn]` is shown as written.
    table = Table(title=escape(title), title_justify="left", caption=escape(caption) if hidden else None,
                  caption_justify="left")  # fmt: skip
    for i in columns:
        numeric = is_numeric([r[i] for r in rows])
        table.add_column(escape(header[i]), no_wrap=True, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(escape(row[i]) for i in columns))
    return table


def frame_cells(frame: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    return [str(c) for c in frame.columns], [[str(v) for v in r] for r in frame.itertuples(index=False)]


def frame_table(title: str, frame: pd.DataFrame, width: int | None, wide: bool = False) -> Table:
    """`fitted` of a frame; `frame.attrs["drop_first"]` names the columns to hide first."""
    header, rows = frame_cells(frame)
    return fitted(title, header, rows, width, wide, frame.attrs.get("drop_first", ()))
