"""What a person sees: the consoles, one-line messages, epoch lines, live progress bars for `run` and
`sweep`, and fitted tables. On a terminal the bars are live; in pipes and logs, one plain line per
epoch or run. No torch here (`bnbench --help` must stay fast).

Everything shown that came from a user (run names, paths, errors) is escaped: names are data, never
Rich markup.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from bnbench.cli import streams
from bnbench.evidence.tables import Rows, fitted, shown_columns, without_controls


def _size(stream) -> dict[str, int | None]:
    """Rich's width and height: its own (it asks the terminal) on a terminal, but a dumb one, for which Rich
    assumes 80 x 25 unless both are given; off a terminal (CI logs, pipes) Rich would wrap at 80 columns:
    there, lines are as long as they need to be."""
    if not stream.isatty():
        return {"width": 100_000, "height": None}
    if os.environ.get("TERM") in ("dumb", "unknown"):
        size = shutil.get_terminal_size()
        return {"width": size.columns, "height": size.lines}
    return {"width": None, "height": None}


console = Console(**_size(sys.stdout), emoji=False)  # names shown as written
err_console = Console(stderr=True, **_size(sys.stderr), emoji=False)


def live() -> bool:
    return console.is_terminal


def terminal_width() -> int | None:
    """The width tables must fit, or None off a terminal (nothing is dropped in pipes and logs)."""
    return console.width if console.is_terminal else None


def plural(n: int, noun: str) -> str:
    """`1 run`, `2 runs`."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def printable(text: str) -> str:
    """`text` as a terminal can safely show it: control characters (an escape sequence in the name of a folder
    someone sent) written as `\\xNN`, never sent; on an ASCII-only terminal (`LC_ALL=C`) in ASCII, before a
    table measures it, so its columns stay aligned."""
    text = without_controls(text)
    return streams.ascii_text(text) if streams.ascii_only() else text


def say(message: str, style: str | None = None) -> None:
    console.print(escape(printable(message)), style=style, highlight=False, soft_wrap=True)


def error(message: str, label: str = "error") -> None:
    err_console.print(f"[red]{escape(label)}:[/red] {escape(printable(message))}", highlight=False, soft_wrap=True)


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/yellow] {escape(printable(message))}", highlight=False, soft_wrap=True)


def note(message: str) -> None:
    err_console.print(escape(printable(message)), highlight=False, soft_wrap=True)


def _print_table(table: Table, wide: bool) -> None:
    """With `wide`, the table is drawn as wide as its cells need (nothing shortened with "…"); the terminal
    wraps or scrolls its lines."""
    if not (wide and console.is_terminal):
        console.print(table)
        return
    from rich.measure import Measurement

    needed = Measurement.get(console, console.options.update_width(1_000_000), table).maximum
    if needed <= console.width:
        console.print(table)
        return
    Console(file=console.file, width=needed, force_terminal=True, color_system=console.color_system).print(table)


def _printable_table(header: list[str], rows: list[list[str]], drop_first: tuple[str, ...] | list[str]) -> tuple:
    return ([printable(h) for h in header], [[printable(c) for c in row] for row in rows],
            [printable(h) for h in drop_first])  # fmt: skip


def show_table(title: str, header: list[str], rows: list[list[str]], wide: bool = False,
               drop_first: tuple[str, ...] | list[str] = ()) -> None:  # fmt: skip
    """A fitted table (`tables.fitted`) of cells from files and names, shown as `printable` text."""
    header, rows, drop_first = _printable_table(header, rows, drop_first)
    _print_table(fitted(printable(title), header, rows, terminal_width(), wide, drop_first), wide)


def show_rows(title: str, rows: Rows, wide: bool = False) -> None:
    header, cells = rows.cells()
    show_table(title, header, cells, wide, rows.drop_first)


def shown_headers(rows: Rows, wide: bool = False) -> list[str]:
    """The columns of `rows` that `show_rows` puts on this terminal (their names as in `rows`)."""
    header, cells = rows.cells()
    as_shown, shown_cells, drop_first = _printable_table(header, cells, rows.drop_first)
    return [header[i] for i in shown_columns(as_shown, shown_cells, terminal_width(), wide, drop_first)]


def show(renderable: Table | str) -> None:
    console.print(renderable, highlight=False)


def duration(seconds: float) -> str:
    """41 s, 3 min 20 s, 1 h 05 min."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def fit(parts: list[str], room: int, sep: str = "  ") -> str:
    """Join `parts` in order while they fit in `room` characters (the first always stays)."""
    text = parts[0]
    for part in parts[1:]:
        if len(text) + len(sep) + len(part) > room:
            break
        text += sep + part
    return text


def epoch_parts(name: str, epochs: int, row: dict[str, float]) -> list[str]:
    """An epoch's summary in parts, most important first; joined it fits 100 columns for names up to 14."""
    return [
        f"{name}  epoch {int(row['epoch'])}/{epochs}",
        f"train loss {row['train_loss']:.4f} acc {row['train_acc']:.4f}",
        f"test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f}",
        *([f"val acc {row['val_acc']:.4f}"] if "val_acc" in row else []),  # data.val_split
        f"{row['epoch_seconds']:.1f}s",
        f"{row['examples_per_second']:,.0f} ex/s",
    ]


def epoch_line(name: str, epochs: int, row: dict[str, float], width: int | None = None) -> str:
    """The summary line of an epoch; on a terminal narrower than it, the test accuracy comes first and
    what does not fit is left out."""
    parts = epoch_parts(name, epochs, row)
    if width is None or len("  ".join(parts)) <= width:
        return "  ".join(parts)
    short = [parts[0], f"test acc {row['test_acc']:.4f}", f"train loss {row['train_loss']:.4f}", parts[-2]]
    return fit(short, width)


def started_line(name: str, path: Path, note_text: str) -> str:
    return f"{name}: writing {path}" + (f" ({note_text})" if note_text else "")


class PlainReporter:
    """One line per epoch: for pipes, CI and log files. (Not a train.SilentReporter subclass: that
    would import torch for every command, `--help` included.)"""

    def __init__(self, name: str, epochs: int) -> None:
        self.name, self.epochs = name, epochs

    def started(self, path: Path, note_text: str, batch_size: int) -> None:
        print(started_line(self.name, path, note_text), flush=True)

    def epoch_start(self, epoch: int, steps: int) -> None:
        pass

    def progress(self, steps_done: int, loss: float, acc: float) -> None:
        pass

    def evaluating(self) -> None:
        pass

    def epoch_end(self, row: dict[str, float]) -> None:
        print(epoch_line(self.name, self.epochs, row), flush=True)


class RunClock:
    """Time left in a run from its own pace: seconds per step so far (evaluation included), times the
    steps still to do in this epoch and the epochs after it."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self.started: float | None = None
        self.steps_before = 0  # steps done in this session before the current epoch
        self.epoch, self.steps, self.done = 0, 0, 0

    def epoch_start(self, epoch: int, steps: int) -> None:
        if self.started is None:
            self.started = time.monotonic()
        else:
            self.steps_before += self.steps
        self.epoch, self.steps, self.done = epoch, steps, 0

    def seconds_left(self) -> float | None:
        done = self.steps_before + self.done
        if self.started is None or done == 0:
            return None
        per_step = (time.monotonic() - self.started) / done
        return per_step * ((self.steps - self.done) + (self.epochs - self.epoch) * self.steps)

    def fraction(self) -> float:
        if not self.steps:
            return 0.0
        return min(1.0, ((self.epoch - 1) * self.steps + self.done) / (self.epochs * self.steps))


def _bar_columns() -> tuple[TextColumn, BarColumn, TextColumn]:
    return TextColumn("{task.description}"), BarColumn(bar_width=20), TextColumn("{task.fields[info]}")


def _fit_bar(bar: BarColumn, width: int, description: str, info: str) -> tuple[str, str]:
    """Size the bar from the terminal alone (every line of a display shares it), then shorten the
    description and info so that the line fits `width`: a bar never wraps onto a second line."""
    bar.bar_width = max(10, min(30, width - 80))
    room = width - bar.bar_width - 3  # two column gaps and a spare column
    if len(description) > max(12, room // 2):
        description = description[: max(12, room // 2) - 1] + "…"
    return description, info[: max(0, room - len(description))]


class RunDisplay:
    """`bnbench run` on a terminal: one live bar for the current run (epoch, steps, loss, accuracy, speed,
    time left in the run) and, with several runs, a line for all of them with the time they have left."""

    def __init__(self, total_runs: int) -> None:
        self.columns = _bar_columns()
        self.bars = Progress(*self.columns, console=console, transient=True)
        self.total_runs, self.runs_done = total_runs, 0
        self.durations: list[float] = []
        self.overall = self.bars.add_task("all runs", total=total_runs, info=f"0/{total_runs} done",
                                          visible=total_runs > 1)  # fmt: skip
        self.current: LiveReporter | None = None

    def __enter__(self) -> RunDisplay:
        self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    def reporter(self, name: str, epochs: int) -> LiveReporter:
        if self.current is not None:  # the previous run ended
            self.runs_done += 1
            if self.current.clock.started is not None:
                self.durations.append(time.monotonic() - self.current.clock.started)
            self.current.close()
        self.current = LiveReporter(name, epochs, self)
        return self.current

    def refresh_overall(self) -> None:
        if self.total_runs <= 1 or self.current is None:
            return
        clock = self.current.clock
        left = clock.seconds_left()
        info = f"{self.runs_done}/{self.total_runs} done"
        if left is not None:
            per_run = sum(self.durations) / len(self.durations) if self.durations else None
            if per_run is None and clock.fraction() > 0:
                per_run = (time.monotonic() - (clock.started or 0)) / clock.fraction()
            later = self.total_runs - self.runs_done - 1
            info += f" · {duration(left + later * (per_run or 0))} left"
        description, info = _fit_bar(self.columns[1], console.width, "all runs", info)
        self.bars.update(self.overall, completed=self.runs_done + clock.fraction(), description=description, info=info)


class LiveReporter:
    """The live bar of one run: `name epoch 3/10 [bar] 41/469 loss 0.41 acc 0.88 12,000 ex/s 41 s left`."""

    def __init__(self, name: str, epochs: int, display: RunDisplay) -> None:
        self.name, self.epochs, self.display = name, epochs, display
        self.clock = RunClock(epochs)
        self.batch_size = 1
        self.epoch_started = 0.0
        self.task: int | None = None  # the bar appears with the first epoch
        self.loss = self.acc = float("nan")
        self.phase = ""

    def close(self) -> None:
        if self.task is not None:
            self.display.bars.remove_task(self.task)

    def started(self, path: Path, note_text: str, batch_size: int) -> None:
        self.batch_size = batch_size
        say(started_line(self.name, path, note_text))

    def epoch_start(self, epoch: int, steps: int) -> None:
        self.clock.epoch_start(epoch, steps)
        if self.task is None:  # added with its text: the refresh thread may draw it at once
            label = _fit_bar(self.display.columns[1], console.width, f"{self.name} epoch {epoch}/{self.epochs}", "")
            self.task = self.display.bars.add_task(label[0], total=max(1, steps), info=f"0/{steps}")
        self.epoch_started = time.monotonic()
        self.loss = self.acc = float("nan")
        self.phase = ""
        self._refresh()

    def progress(self, steps_done: int, loss: float, acc: float) -> None:
        self.clock.done, self.loss, self.acc = steps_done, loss, acc
        self._refresh()

    def evaluating(self) -> None:
        self.phase = "evaluating"
        self._refresh()

    def epoch_end(self, row: dict[str, float]) -> None:
        say(epoch_line(self.name, self.epochs, row, console.width - 1))

    def _refresh(self) -> None:
        if self.task is None:
            return
        clock = self.clock
        elapsed = time.monotonic() - self.epoch_started
        left = clock.seconds_left()
        parts = [f"{clock.done}/{clock.steps}"]
        parts.append(self.phase or (f"loss {self.loss:.4f} acc {self.acc:.4f}" if self.loss == self.loss else ""))
        if elapsed > 0 and clock.done and not self.phase:
            parts.append(f"{clock.done * self.batch_size / elapsed:,.0f} ex/s")
        # The time left matters most: it goes second, and the rest drops first on a narrow terminal.
        info_parts = [parts[0]] + ([f"{duration(left)} left"] if left is not None else []) + [p for p in parts[1:] if p]
        width = console.width
        description = f"{self.name} epoch {clock.epoch}/{self.epochs}"
        info = fit(info_parts, max(12, width - len(description) - 14), " · ")
        description, info = _fit_bar(self.display.columns[1], width, description, info)
        self.display.bars.update(self.task, completed=clock.done, total=max(1, clock.steps), description=description,
                                 info=info)  # fmt: skip
        self.display.refresh_overall()


class SweepDisplay:
    """On a terminal: one line for the sweep (runs done / total, failures, time left for the sweep) and a
    line per busy worker (its run, epoch, steps, loss). Off a terminal: one line per finished run."""

    def __init__(self, total: int, live_bars: bool) -> None:
        self.live, self.total, self.done, self.failed = live_bars, total, 0, 0
        self.columns = _bar_columns()
        self.bars = Progress(*self.columns, console=console, transient=True)
        self.overall = self.bars.add_task("sweep", total=max(1, total), info="")
        self.workers: dict[str, tuple[int, float]] = {}  # run name -> (task id, fraction of the run done)
        self.finished: set[str] = set()
        self.started = time.monotonic()
        self._refresh_overall()

    def __enter__(self) -> SweepDisplay:
        if self.live:
            self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live:
            self.bars.stop()

    def progress(self, update: tuple) -> None:
        _pid, name, epoch, epochs, done, steps, loss = update
        if name in self.finished:  # a late update of a run whose result came first
            return
        description = f"{name} epoch {epoch}/{epochs}"
        info = fit([f"{done}/{steps}"] + ([f"loss {loss:.4f}"] if loss == loss else []), 30, " · ")
        description, info = _fit_bar(self.columns[1], console.width, description, info)
        if name not in self.workers:  # added with its text: the refresh thread may draw it at once
            self.workers[name] = (self.bars.add_task(description, total=max(1, steps), info=info), 0.0)
        task = self.workers[name][0]
        self.workers[name] = (task, ((epoch - 1) * steps + done) / max(1, epochs * steps))
        self.bars.update(task, description=description, completed=done, total=max(1, steps), info=info)
        self._refresh_overall()

    def _refresh_overall(self) -> None:
        fraction = (self.done + sum(f for _, f in self.workers.values())) / max(1, self.total)
        parts = [f"{self.done}/{self.total} runs"]
        if self.failed:
            parts.append(f"{self.failed} failed")
        if 0 < fraction < 1:
            elapsed = time.monotonic() - self.started
            parts.append(f"{duration(elapsed * (1 - fraction) / fraction)} left")
        description, info = _fit_bar(self.columns[1], console.width, "sweep", " · ".join(parts))
        self.bars.update(self.overall, completed=fraction * max(1, self.total), description=description, info=info)

    def result(self, result) -> None:
        self.done += 1
        self.failed += result.status == "failed"
        self.finished.add(result.name)
        if result.name in self.workers:
            self.bars.remove_task(self.workers.pop(result.name)[0])
        acc = f"test_acc {result.final_test_acc:.4f}" if result.final_test_acc is not None else ""
        line = f"{result.status:<11} {result.name}  epochs {result.epochs_completed}  {acc}".rstrip()
        if self.live:
            self._refresh_overall()
            say(line)
        else:
            print(line, flush=True)


@contextmanager
def counting(label: str) -> Iterator[Callable[[int, int, str], None]]:
    """A transient bar while a long step works through its items (`check`'s cases): on a terminal,
    "label [bar] 12/80 item" on one line; nothing in pipes. Yields update(done, total, item)."""
    if not live():
        yield lambda done, total, item: None
        return
    columns = _bar_columns()
    bars = Progress(*columns, console=console, transient=True)
    task = bars.add_task(label, total=1, info="")

    def update(done: int, total: int, item: str) -> None:
        description, info = _fit_bar(columns[1], console.width, label, f"{done}/{total} {item}")
        bars.update(task, completed=done, total=max(1, total), description=description, info=info)
        if not bars.live.is_started:  # the first frame shows a count, never a bare bar
            bars.start()

    try:
        yield update
    finally:
        bars.stop()
