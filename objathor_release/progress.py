"""Progress for long work, the library's side: the ``Progress`` interface and the ``progress`` factory.

Library code asks ``progress(total, desc, unit)`` for a reporter and calls
``update(n)`` and ``close()`` on it (or uses it as a context manager). What it
draws is the caller's choice: a program that installs nothing gets a silent
reporter, and the command line installs its renderers (a tqdm bar on a
terminal, plain periodic lines otherwise: see ``objathor_release.cli.output``)
through ``set_renderer``.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Callable
from typing import Any


class Progress(abc.ABC):
    """The interface: ``update(n)``, ``close()``, usable as a context manager."""

    @abc.abstractmethod
    def update(self, n: int = 1) -> None:
        """Count ``n`` more units done."""

    @abc.abstractmethod
    def close(self) -> None:
        """Finish (a renderer shows its final line)."""

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, bytes_transferred: int = 0, **kwargs: Any) -> None:
        """s3transfer-style callback: accept ``**kwargs`` for forward compatibility."""
        self.update(bytes_transferred)


class SilentProgress(Progress):
    """Counts nothing and shows nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


#: builds a reporter from (total, desc, unit); the CLI installs one, a library caller may too
Renderer = Callable[[int | None, str, str], Progress]

_lock = threading.Lock()
_renderer: Renderer | None = None


def set_renderer(renderer: Renderer | None) -> Renderer | None:
    """Install ``renderer`` for every later ``progress`` call (None: silent); return the one it replaces."""
    global _renderer
    with _lock:
        previous, _renderer = _renderer, renderer
    return previous


def progress(total: int | None, desc: str, unit: str = "B", *, enabled: bool = True) -> Progress:
    """A reporter for ``total`` units (None if unknown) of ``desc``; silent when ``enabled`` is false
    or no renderer is installed."""
    renderer = _renderer
    if not enabled or renderer is None:
        return SilentProgress()
    return renderer(total, desc, unit)
