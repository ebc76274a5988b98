"""Progress for long work: a tqdm bar on a terminal, plain periodic lines otherwise.

CI logs get one line every ``OBJATHOR_PROGRESS_INTERVAL`` seconds (default 10)
and one at the end, e.g. ``upload assets.tar: 45% 1.2 GiB/2.7 GiB 118.4 MB/s``.
Both kinds are safe to update from several threads.
"""

from __future__ import annotations

import abc
import os
import sys
import threading
import time
from typing import Any, TextIO

from objathor_release.settings import format_size


class Progress(abc.ABC):
    """The interface: ``update(n)``, ``close()``, usable as a context manager."""

    @abc.abstractmethod
    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done."""

    @abc.abstractmethod
    def close(self) -> None:
        """Finish (prints the final line)."""

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, bytes_transferred: int = 0, **kwargs: Any) -> None:
        """s3transfer-style callback: accept ``**kwargs`` for forward compatibility."""
        self.update(bytes_transferred)


class _Tqdm(Progress):
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


class _Lines(Progress):
    def __init__(self, total: int | None, desc: str, unit: str, stream: TextIO, interval: float) -> None:
        self.total, self.desc, self.unit, self.stream = total, desc, unit, stream
        self.interval = interval
        self.done = 0
        self.start = self._last = time.monotonic()
        self._lock = threading.Lock()
        self._closed = False

    def _fmt(self, n: float) -> str:
        return format_size(n) if self.unit == "B" else f"{int(n)} {self.unit}"

    def _line(self) -> str:
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
                print(self._line(), file=self.stream, flush=True)

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                print(self._line() + " done", file=self.stream, flush=True)


class _Silent(Progress):
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress(
    total: int | None, desc: str, unit: str = "B", *, enabled: bool = True, stream: TextIO | None = None
) -> Progress:
    """A progress reporter fit for where output goes (terminal, log, or nowhere)."""
    out = stream if stream is not None else sys.stderr
    if not enabled or os.environ.get("OBJATHOR_PROGRESS") == "0":
        return _Silent()
    if out.isatty() and os.environ.get("CI") is None:
        return _Tqdm(total, desc, unit, out)
    interval = float(os.environ.get("OBJATHOR_PROGRESS_INTERVAL", "10"))
    return _Lines(total, desc, unit, out, interval)
