"""Standard streams that never break a run: a closed stdout or stderr (`>&-`), a reader that went away
(`| head -1`) or a terminal that cannot show a character stops or degrades the *printing*, never the
training. Installed by `main()` before any command runs; no torch, no Rich here.

- A closed descriptor 0, 1 or 2 is reopened on /dev/null first, so no file bnbench opens later (a CSV, a
  checkpoint) can take its number and receive printed lines.
- A write to a pipe whose reader is gone (EPIPE) points the descriptor at /dev/null and remembers it;
  `main()` then exits 141 (128 + SIGPIPE, what a shell reports for a writer whose reader left) unless a
  run failed, diverged or was interrupted.
- An ASCII-only locale (`LC_ALL=C`, `LANG=POSIX`) or `TERM=dumb` gets ASCII: Rich draws its tables with
  ASCII and bnbench's own characters (`·`, `±`, `Δ`, ...) are spelled in ASCII; a character the stream
  cannot encode is replaced, never raised inside training.
"""

from __future__ import annotations

import errno
import io
import os
import sys

EXIT_CLOSED_PIPE = 141
ASCII = str.maketrans({"·": "-", "±": "+/-", "Δ": "d", "×": "x", "—": "-", "–": "-", "…": "...", "≥": ">=",
                       "≤": "<=", "→": "->", "≈": "~", "σ": "sd", "γ": "gamma", "β": "beta", "µ": "u", "μ": "u",
                       "✓": "ok", "✗": "x"})  # fmt: skip
_BROKEN: list[str] = []  # the names of the streams whose reader went away


def reopen_closed_descriptors() -> None:
    """Descriptors 0-2 that are closed get /dev/null; sys.stdin/stdout/stderr that are None get a file on it."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            new = os.open(os.devnull, os.O_RDWR)
            if new != fd:
                os.dup2(new, fd)
                os.close(new)
    for name, mode in (("stdin", "r"), ("stdout", "w"), ("stderr", "w")):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, mode))  # noqa: SIM115 - lives as long as the process


def ascii_text(text: str) -> str:
    """`text` in ASCII: bnbench's own characters spelled out (`±` as `+/-`), any other as a backslash escape."""
    return text.translate(ASCII).encode("ascii", "backslashreplace").decode("ascii")


def ascii_only() -> bool:
    """The locale or the terminal cannot show anything but ASCII."""
    ctype = os.environ.get("LC_ALL") or os.environ.get("LC_CTYPE") or os.environ.get("LANG") or ""
    return ctype in ("C", "POSIX") or os.environ.get("TERM") == "dumb"


class SafeStream(io.TextIOBase):
    """A text stream around sys.stdout or sys.stderr whose writes never raise for a gone reader or an
    unencodable character."""

    def __init__(self, stream, name: str, ascii: bool) -> None:
        self.stream, self.name, self.ascii = stream, name, ascii

    @property
    def encoding(self) -> str:
        return "ascii" if self.ascii else getattr(self.stream, "encoding", None) or "utf-8"

    def write(self, text: str) -> int:
        if self.name in _BROKEN:
            return len(text)
        shown = text.translate(ASCII) if self.ascii else text
        try:
            try:
                self.stream.write(shown)
            except UnicodeEncodeError:
                encoding = getattr(self.stream, "encoding", None) or "ascii"
                self.stream.write(shown.translate(ASCII).encode(encoding, "replace").decode(encoding))
        except OSError as exc:
            self._lost(exc)
        return len(text)

    def flush(self) -> None:
        if self.name in _BROKEN:
            return
        try:
            self.stream.flush()
        except OSError as exc:
            self._lost(exc)

    def _lost(self, exc: OSError) -> None:
        if exc.errno not in (errno.EPIPE, errno.EBADF, errno.ECONNRESET, errno.EIO):
            raise exc
        _BROKEN.append(self.name)
        try:  # what is still buffered, and the interpreter's last flush, go nowhere
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self.stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass

    def isatty(self) -> bool:
        try:
            return self.name not in _BROKEN and self.stream.isatty()
        except ValueError:  # the stream was closed under us (another library's atexit hook asking): not a terminal
            return False

    def fileno(self) -> int:
        return self.stream.fileno()

    def writable(self) -> bool:
        return True


def install() -> None:
    """Wrap sys.stdout and sys.stderr (once)."""
    reopen_closed_descriptors()
    ascii = ascii_only()
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if not isinstance(stream, SafeStream):
            setattr(sys, name, SafeStream(stream, name, ascii))


def stdout_lost() -> bool:
    """The reader of stdout went away while bnbench was printing."""
    return "stdout" in _BROKEN
