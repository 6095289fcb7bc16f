"""What a run records: the schema of each CSV file in a run directory, declared here and nowhere else.

The trainer builds every row through `Schema.row`, which refuses a missing or undeclared column, so a
new figure is added in one place. Writing is append-and-flush (a killed run keeps every row written so
far) or an atomic rewrite. No torch here: `compare` and the tests read runs without it.
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


def _file_mode() -> int:
    """The mode a plain `open(path, "w")` would give a new file: 0o666 less the user's umask (read once)."""
    if not _MODE:
        umask = os.umask(0o022)  # reading the umask means setting it; put it straight back
        os.umask(umask)
        _MODE.append(0o666 & ~umask)
    return _MODE[0]


_MODE: list[int] = []


def atomic_write(path: Path, data: bytes | str) -> None:
    """Write to a uniquely named temporary file beside `path`, then rename it over `path`: never a
    half-written file, and two writers never share a temporary file. A failed write removes it. The file
    gets the user's umask, as any file they create (mkstemp's own 0600 would hide runs from their group)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _file_mode())
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class DamagedFile(ValueError):
    """A run file that is not what bnbench writes: the message names the file and the line."""

    def __init__(self, path: Path, line: int | None, problem: str) -> None:
        super().__init__(f"{path}, line {line}: {problem}" if line is not None else f"{path}: {problem}")


MAX_SMALL_FILE = 1 << 20  # meta.json, config.yaml, study.yaml: bnbench writes a few KB
MAX_CSV_FILE = 1 << 30


def read_run_file(path: Path, limit: int = MAX_CSV_FILE) -> str:
    """A run file's text, read only if it is a regular file of a sane size, not a link: a link (to another
    run's file, to /dev/zero), a FIFO, a device or a huge file is a DamagedFile, never a hang, an
    out-of-memory or another run's numbers."""
    import stat

    try:  # opening a FIFO must not wait for a writer; a link is not followed (a received folder is data)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        if path.is_symlink():
            raise DamagedFile(path, None, "a link; links in run folders are not followed") from None
        raise DamagedFile(path, None, f"cannot be read ({exc.strerror})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise DamagedFile(path, None, "not a regular file (a FIFO, device or socket)")
        if info.st_size > limit:
            raise DamagedFile(path, None, f"{info.st_size:,} bytes, larger than any file bnbench writes")
        data = os.read(fd, info.st_size + 1)  # the file's size: reading `limit` would allocate a GiB
        if len(data) > info.st_size:  # it grew since: a run still appending rows
            chunks, size = [data], len(data)
            while size <= limit and (chunk := os.read(fd, 1 << 20)):
                chunks.append(chunk)
                size += len(chunk)
            data = b"".join(chunks)
    finally:
        os.close(fd)
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise DamagedFile(path, None, "not text (UTF-8)") from None


TEXT_COLUMNS = {"layer", "quantity"}
ONE_ROW_EACH = {"metrics.csv": "epoch", "steps.csv": "step"}  # the column that strictly increases, per file


def check_rows(path: Path, rows: list[dict[str, str]]) -> None:
    """Numbers parse, and the file only goes forward: metrics.csv one row per epoch, steps.csv one
    per step, diagnostics.csv many rows per step."""
    ordered = ONE_ROW_EACH.get(path.name)
    previous: dict[str, float] = {}
    for line, row in enumerate(rows, start=2):
        for key, text in row.items():
            if key in TEXT_COLUMNS:
                continue
            try:
                value = float(text)
            except (TypeError, ValueError):
                raise DamagedFile(path, line, f"{key} is {text!r}, not a number") from None
            if key not in ("epoch", "step"):
                continue
            last = previous.get(key, float("-inf"))
            if value < last or (key == ordered and value == last):
                raise DamagedFile(path, line, f"{key} {value:g} after {last:g} (a duplicated or reordered row)")
            previous[key] = value


RUN_CSVS = ("metrics.csv", "steps.csv", "diagnostics.csv")


def check_run_files(run_dir: Path) -> None:
    """Check every CSV a run directory has (see check_rows); raises DamagedFile naming file and line."""
    for name in RUN_CSVS:
        if (run_dir / name).exists():
            text = read_run_file(run_dir / name)
            check_rows(run_dir / name, list(csv.DictReader(io.StringIO(text, newline=""))))


@dataclass(frozen=True)
class Schema:
    file: str
    columns: tuple[str, ...]

    def row(self, **values: object) -> dict[str, object]:
        """A row with exactly the declared columns, in order; anything else is a programming error."""
        missing = [c for c in self.columns if c not in values]
        extra = [k for k in values if k not in self.columns]
        if missing or extra:
            raise ValueError(f"{self.file}: row has undeclared columns {extra} and lacks {missing}")
        return {c: values[c] for c in self.columns}

    def create(self, run_dir: Path) -> None:
        self.rewrite(run_dir, [])

    def append(self, run_dir: Path, rows: list[dict]) -> None:
        """Append rows and flush them to disk."""
        with open(run_dir / self.file, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns).writerows(rows)  # an undeclared key raises
            f.flush()
            os.fsync(f.fileno())

    def read(self, run_dir: Path) -> list[dict[str, str]]:
        """The file's rows, checked: the declared header, numbers that parse, steps and epochs in order."""
        reader = csv.DictReader(io.StringIO(read_run_file(run_dir / self.file), newline=""))
        header = tuple(reader.fieldnames or ())
        rows = list(reader)
        if header != self.columns:
            raise DamagedFile(
                run_dir / self.file, 1, f"columns {', '.join(header)}; expected {', '.join(self.columns)}"
            )
        check_rows(run_dir / self.file, rows)
        return rows

    def rewrite(self, run_dir: Path, rows: list[dict]) -> None:
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self.columns)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(run_dir / self.file, text.getvalue())


# metrics.csv: one row per completed epoch. Accuracies are fractions.
METRIC_COLUMNS = (
    "epoch",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "lr",
    "epoch_seconds",
    "examples_per_second",
)
STEPS = Schema("steps.csv", ("step", "epoch", "examples_seen", "train_loss", "train_acc"))
# diagnostics.csv, long form: one value of one quantity at one norm position (or "model") at one step.
DIAGNOSTICS = Schema("diagnostics.csv", ("step", "epoch", "layer", "quantity", "value"))


VAL_COLUMNS = ("val_loss", "val_acc")  # data.val_split > 0: the held-out part of the training set
OTHER_EVAL_COLUMNS = ("test_acc_batch_stats", "test_acc_running_stats")
# Every column a claim may read from metrics.csv or steps.csv (specs.py checks names against it).
RECORDED_COLUMNS = tuple(dict.fromkeys(METRIC_COLUMNS + OTHER_EVAL_COLUMNS + VAL_COLUMNS + STEPS.columns))


def metrics_schema(has_running_stats: bool, eval_bn: str, val: bool = False) -> Schema:
    """A model with BN running statistics also records test accuracy under the other evaluation mode; a run
    with a validation split (data.val_split) records its loss and accuracy, last."""
    columns = METRIC_COLUMNS
    if has_running_stats:
        columns += (OTHER_EVAL_COLUMNS[0] if eval_bn == "running" else OTHER_EVAL_COLUMNS[1],)
    return Schema("metrics.csv", columns + (VAL_COLUMNS if val else ()))
