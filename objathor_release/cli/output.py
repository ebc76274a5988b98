"""What the command line shows while it works: log lines and progress, set up once per run.

``cli_output(verbose=..., quiet=...)`` installs, for the duration of one command:

- a handler on the ``objathor_release`` logger that writes each record as one
  ``objathor-release: <message>`` line to stderr (INFO and up; DEBUG and up with
  ``-v``). A program that imports the package and never calls this sees nothing:
  the package's logger has only a NullHandler.
- the progress renderer: a tqdm bar when stderr is a terminal (and ``$CI`` is
  unset), otherwise one plain line every ``OBJATHOR_PROGRESS_INTERVAL`` seconds
  (default 10) and one at the end, e.g. ``upload assets.tar: 45% 1.2 GiB/2.7 GiB
  118.4 MB/s``; none with ``-q`` or ``OBJATHOR_PROGRESS=0``. Both kinds are safe
  to update from several threads.

Streams are looked up when a line is written, so a caller that swaps
``sys.stderr`` (a test capturing output) gets the lines.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from objathor_release.cli.common import PROG
from objathor_release.errors import UsageError
from objathor_release.progress import Progress, SilentProgress, set_renderer

PACKAGE_LOGGER = "objathor_release"


class StderrHandler(logging.Handler):
    """Each record as ``<prefix>: <message>`` (or the bare message without a prefix) on the current stderr."""

    def __init__(self, prefix: str | None = PROG, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.prefix = f"{prefix}: " if prefix else ""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stream = sys.stderr
            stream.write(f"{self.prefix}{self.format(record)}\n")
            stream.flush()
        except Exception:  # pragma: no cover - logging's own convention
            self.handleError(record)


@contextmanager
def cli_output(*, verbose: bool = False, quiet: bool = False) -> Iterator[None]:
    """Log lines and progress for one command; everything is put back as it was on exit."""
    logger = logging.getLogger(PACKAGE_LOGGER)
    level = logging.DEBUG if verbose else logging.INFO
    handler = StderrHandler(PROG, level)
    old_level = logger.level
    logger.setLevel(level)
    logger.addHandler(handler)
    previous = set_renderer(None if quiet else render_progress)
    try:
        yield
    finally:
        set_renderer(previous)
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def render_progress(total: int | None, desc: str, unit: str = "B") -> Progress:
    """The renderer fit for where stderr goes now: a terminal, a log, or nowhere."""
    if os.environ.get("OBJATHOR_PROGRESS") == "0":
        return SilentProgress()
    out = sys.stderr
    if out.isatty() and os.environ.get("CI") is None:
        return TqdmProgress(total, desc, unit, out)
    return LineProgress(total, desc, unit, out, _interval())


def _interval() -> float:
    text = os.environ.get("OBJATHOR_PROGRESS_INTERVAL", "10")
    try:
        return float(text)
    except ValueError:
        raise UsageError(f"OBJATHOR_PROGRESS_INTERVAL={text!r} is not a number of seconds: "
                         "set it to e.g. 10, or unset it") from None


class TqdmProgress(Progress):
    """A tqdm bar (bytes scaled by 1024)."""

    def __init__(self, total: int | None, desc: str, unit: str, stream: TextIO) -> None:
        from tqdm import tqdm

        scale = unit == "B"
        self._bar = tqdm(
            total=total, desc=desc, unit=unit, unit_scale=scale, unit_divisor=1024 if scale else 1000,
            file=stream, dynamic_ncols=True, leave=True,
        )

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def close(self) -> None:
        self._bar.close()


class LineProgress(Progress):
    """A plain line every ``interval`` seconds of updates, and a final one ending in ``done``."""

    def __init__(self, total: int | None, desc: str, unit: str, stream: TextIO, interval: float) -> None:
        self.total, self.desc, self.unit, self.stream = total, desc, unit, stream
        self.interval = interval
        self.done = 0
        self.start = self._last = time.monotonic()
        self._lock = threading.Lock()
        self._closed = False

    def _fmt(self, n: float) -> str:
        from objathor_release.settings import format_size  # here: the CLI's start-up stays light

        return format_size(n) if self.unit == "B" else f"{int(n)} {self.unit}"

    def line(self) -> str:
        elapsed = max(time.monotonic() - self.start, 1e-9)
        parts = [f"{self.desc}:"]
        if self.total and self.unit == "B":
            parts.append(f"{100.0 * self.done / self.total:.0f}%")
            parts.append(f"{self._fmt(self.done)}/{self._fmt(self.total)}")
        elif self.total:
            parts.append(f"{100.0 * self.done / self.total:.0f}%")
            parts.append(f"{self.done}/{self.total} {self.unit}")
        else:
            parts.append(self._fmt(self.done))
        if self.unit == "B":
            parts.append(f"{self.done / elapsed / 1e6:.1f} MB/s")
        else:
            parts.append(f"{self.done / elapsed:.0f} {self.unit}/s")
        return " ".join(parts)

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if now - self._last >= self.interval:
                self._last = now
                self._write(self.line())

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._write(self.line() + " done")

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()
