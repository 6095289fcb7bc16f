"""Terminal tables that never split a number or a word: every column keeps one line per cell; when a
table is wider than the terminal, columns are dropped from the right (the first stays) and a caption
names them; `--wide` keeps them all. No torch here."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:  # only for the hint: `bnbench --help` does not import pandas
    import pandas as pd

FIGURE = r"[-+]?[\d,.]+(e[-+]?\d+)?(x|%| s)?( ± [\d.,e+-]+)?( \([^)]*\))?"
# A figure, figures joined by " / " or a dash (ranges), or a lone dash for "none".
NUMBER = re.compile(rf"^{FIGURE}(( / |–){FIGURE})*$|^[-–]( \([^)]*\))?$")


def is_numeric(cells: list[str]) -> bool:
    """Every cell a figure (a number, a mean ± std, a ratio, '-'): the column is right-aligned."""
    filled = [c.strip() for c in cells if c.strip()]
    return bool(filled) and all(NUMBER.match(c) for c in filled)


def fitted(title: str, header: list[str], rows: list[list[str]], width: int | None, wide: bool = False) -> Table:
    """A Rich table of `rows` (strings) that fits `width` characters unless `wide`."""
    columns = list(range(len(header)))
    natural = [max([len(header[i])] + [len(r[i]) for r in rows]) + 3 for i in columns]
    hidden: list[str] = []
    while not wide and width is not None and len(columns) > 1 and sum(natural[i] for i in columns) + 1 > width:
        hidden.insert(0, header[columns.pop()])
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


def frame_table(title: str, frame: pd.DataFrame, width: int | None, wide: bool = False) -> Table:
    return fitted(title, [str(c) for c in frame.columns], [[str(v) for v in r] for r in frame.itertuples(index=False)],
                  width, wide)  # fmt: skip
