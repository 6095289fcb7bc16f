"""Run directories without torch: claiming them, their meta.json, liveness, and one writer at a time.

`compare`, `sweep` planning and the tests read runs through this module, so none of them pays for
importing torch. A run holds an exclusive `flock` on `<run>/.lock` for its whole life; the lock file
names the holder (pid and host) for the one who is refused.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from bnbench.config import config_from_dict
from bnbench.errors import UsageError
from bnbench.records import MAX_SMALL_FILE, atomic_write, read_run_file

RUN_FILES = ("config.yaml", "meta.json")
LOCK_FILE = ".lock"
# What a run killed before its first meta.json leaves behind (temporary files start with a dot).
UNRECORDED_FILES = {"config.yaml", "metrics.csv", "steps.csv", "diagnostics.csv", LOCK_FILE}


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def check_writable(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out-dir {out_dir}: cannot create it ({exc.strerror})") from None
    if not out_dir.is_dir() or not os.access(out_dir, os.W_OK | os.X_OK):
        raise UsageError(f"--out-dir {out_dir}: not a writable directory")


def claim_run_dir(out_dir: Path, name: str) -> Path:
    """Create runs/<name>, or <name>-2, -3, ... if taken; mkdir is atomic, so runs never share one."""
    check_writable(out_dir)
    for k in range(1, 10_000):
        path = out_dir / (name if k == 1 else f"{name}-{k}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise UsageError(f"{out_dir}: too many runs named {name}")


def is_run_dir(path: Path) -> bool:
    return all((path / f).is_file() for f in RUN_FILES)


def never_recorded(path: Path) -> bool:
    """A directory a run claimed but stopped in before its first meta.json (only its first files, or temps)."""
    return (
        path.is_dir()
        and not (path / "meta.json").exists()
        and any(p.name in UNRECORDED_FILES or p.name.endswith(".tmp") for p in path.iterdir())
        and all(p.name in UNRECORDED_FILES or p.name.startswith(".") for p in path.iterdir())
    )


def has_recorded_rows(path: Path) -> bool:
    """Whether metrics.csv in `path` is a regular file with at least one epoch after its header."""
    metrics = path / "metrics.csv"
    try:
        if not metrics.is_file() or metrics.is_symlink():
            return False
        with open(metrics, "rb") as f:
            return len(f.read(1 << 16).splitlines()) > 1
    except OSError:
        return False


def is_alive(meta: dict) -> bool:
    """Whether the process that wrote a 'running' meta.json still runs (on this host; elsewhere assume so)."""
    if meta.get("hostname") != socket.gethostname():
        return True
    try:
        os.kill(int(meta.get("pid", -1)), 0)
    except (ProcessLookupError, ValueError, TypeError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


META_TYPES = {
    "status": str,
    "pid": int,
    "hostname": str,
    "epochs_completed": int,
    "resumed_at": list,
    "config": dict,
    "config_sha256": str,
}


def config_sha256(text: str) -> str:
    """The SHA-256 of config.yaml's text as written (meta.json keeps it): a reader whose config.yaml still has
    this digest knows it is the file bnbench wrote, without parsing it again."""
    return hashlib.sha256(text.encode()).hexdigest()


def read_meta(path: Path) -> dict:
    """meta.json as a dict whose known fields have their types (ValueError names the first that does not)."""
    meta = json.loads(read_run_file(path / "meta.json", MAX_SMALL_FILE))
    if not isinstance(meta, dict):
        raise ValueError("meta.json is not a JSON object")
    for key, kind in META_TYPES.items():
        if meta.get(key) is not None and (not isinstance(meta[key], kind) or isinstance(meta[key], bool)):
            raise ValueError(f"meta.json: {key} is {str(meta[key])[:40]!r}, not a {kind.__name__}")
    return meta


def status_of(path: Path) -> str:
    """completed, diverged, failed, interrupted, running, stale (running, but its process is gone),
    new (no directory) or unrecorded (a directory whose run never wrote its meta.json)."""
    if not path.exists():
        return "new"
    if not is_run_dir(path):
        return "unrecorded"
    meta = read_meta(path)
    status = meta.get("status", "unknown")
    return "stale" if status == "running" and not is_alive(meta) else status


@dataclass
class RunDir:
    path: Path
    meta: dict

    def update_meta(self, **fields: object) -> None:
        self.meta.update(fields, updated_at=now())
        atomic_write(self.path / "meta.json", json.dumps(self.meta, indent=2) + "\n")

    @classmethod
    def open(cls, path: Path) -> RunDir:
        if not path.is_dir():
            raise UsageError(f"--resume {path}: no such directory")
        if not is_run_dir(path):
            if never_recorded(path):
                raise UsageError(f"--resume {path}: the run started but never recorded anything; nothing to resume")
            raise UsageError(f"--resume {path}: not a bnbench run directory (no config.yaml and meta.json)")
        try:
            return cls(path, read_meta(path))
        except (OSError, ValueError) as exc:
            raise UsageError(f"--resume {path}: meta.json is unreadable ({exc})") from None


class LockHeld(Exception):
    """Another process writes this run directory; the message names it."""


class RunLock:
    """An exclusive, non-blocking `flock` on `<run>/.lock`, held while a run writes its directory.
    The kernel drops it when the holder exits, however it exits (kill -9 included)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        self.fd: int | None = None

    def acquire(self, wait_seconds: float = 0.0) -> RunLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = ""
                    for _ in range(20):  # the holder writes its name just after it takes the lock
                        holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
                        if holder:
                            break
                        time.sleep(0.025)
                    holder = holder or "another process"
                    os.close(fd)
                    raise LockHeld(f"{self.path.parent}: in use by {holder}") from None
                time.sleep(0.1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> RunLock:
        return self if self.fd is not None else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        full = f"{prefix}{key}"
        if isinstance(a.get(key), dict) and isinstance(b.get(key), dict):
            out += differences(a[key], b[key], full + ".")
        elif a.get(key) != b.get(key):
            out.append(full)
    return out


def config_changes(meta: dict, config: dict) -> list[str]:
    """Dotted keys in which `config` differs from the config the run started with (meta.json keeps it);
    the name aside. Empty for a run that kept none."""
    started = meta.get("config")
    if not isinstance(started, dict):
        return []
    try:  # keys added to bnbench since the run started take their defaults, which it trained with
        started = config_from_dict(started, "meta.json").to_dict()
    except UsageError:
        pass
    return [k for k in differences(started, config) if k != "name"]


def _age(iso: object) -> str:
    try:
        when = dt.datetime.fromisoformat(str(iso))
    except ValueError:
        return "-"
    if when.tzinfo is None:  # bnbench writes UTC with its offset; a hand-edited time without one is taken as UTC
        when = when.replace(tzinfo=dt.timezone.utc)
    seconds = (dt.datetime.now(dt.timezone.utc) - when).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def run_dirs_under(folder: Path, max_depth: int = 6) -> list[Path]:
    """`folder` itself if it is a run, else every run directory below it (studies of studies too), sorted;
    hidden folders and links to folders are not followed."""
    if (folder / "meta.json").exists():
        return [folder]
    found, level = [], [folder]
    for _ in range(max_depth):
        below = []
        for parent in level:
            try:  # scandir knows a folder from a link without a stat per entry (1,000 runs: 3,000 stats fewer)
                with os.scandir(parent) as entries:
                    children = [Path(e.path) for e in entries
                                if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)]  # fmt: skip
            except OSError:
                continue
            for child in children:
                (found if (child / "meta.json").exists() else below).append(child)
        level = below
    return sorted(found)


def list_runs(folder: Path) -> list[dict]:
    """Every run directory in `folder` (or `folder` itself when it is a run), at any depth, sorted by path."""
    return [run_row(path, str(path.relative_to(folder)) if path != folder else path.name)
            for path in run_dirs_under(folder)]  # fmt: skip


def run_row(path: Path, label: str) -> dict:
    """What `bnbench ls` shows of one run directory: run (`label`), status, epochs_completed, epochs,
    final_test_acc (None before the first epoch), age, path; status `unreadable` for a damaged meta.json."""
    try:
        meta = read_meta(path)
        status = status_of(path)
    except (OSError, ValueError):
        return {"run": label, "status": "unreadable", "epochs_completed": 0,
                "epochs": None, "final_test_acc": None, "age": "-", "path": str(path)}  # fmt: skip
    final = None
    try:
        lines = read_run_file(path / "metrics.csv").splitlines()
        header = lines[0].split(",")
        if len(lines) > 1 and "test_acc" in header:
            final = float(lines[-1].split(",")[header.index("test_acc")])
    except (OSError, ValueError, IndexError):  # DamagedFile is a ValueError
        pass
    return {
        "run": label,
        "status": status,
        "epochs_completed": meta.get("epochs_completed", 0),
        "epochs": meta.get("epochs"),
        "final_test_acc": final,
        "age": _age(meta.get("updated_at") or meta.get("started_at")),
        "path": str(path),
    }
