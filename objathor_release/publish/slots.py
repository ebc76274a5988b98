"""The connections one upload run shares: every file's requests wait here for a slot, in turn.

:class:`Slots` lets at most ``ramp.limit`` requests be in flight over every file together (and
at most ``per_file`` of one file, when ``--upload-concurrency`` fixes it). Waiters are served in
the order they asked, among those whose file is under its own limit; each file asks for one slot
at a time, so the files take turns: a small file started beside a large one gets a connection at
the next free slot, not after the large file's remaining parts. A finished request reports its
bytes to the :class:`~objathor_release.ramp.Ramp`, which decides whether more may go at once.
"""

from __future__ import annotations

import collections
import threading

from objathor_release.ramp import Ramp

__all__ = ["Slots"]


class Slots:
    """Request slots shared by the files of one run (see the module docstring)."""

    def __init__(self, ramp: Ramp, per_file: int | None = None) -> None:
        self.ramp, self.per_file = ramp, per_file
        self._cond = threading.Condition()
        self._queue: collections.deque[tuple[object, str]] = collections.deque()
        self._running = 0
        self._by_file: collections.Counter[str] = collections.Counter()
        self.peak = 0  # the most requests in flight at once, for the tests and the summary

    @property
    def running(self) -> int:
        return self._running

    def _eligible(self) -> object | None:
        """The first waiter whose file may start another request now."""
        if self._running >= self.ramp.limit:
            return None
        for token, owner in self._queue:
            if self.per_file is None or self._by_file[owner] < self.per_file:
                return token
        return None

    def acquire(self, owner: str, stop: threading.Event) -> bool:
        """Wait for a slot for one request of ``owner`` (a file); False when ``stop`` was set first."""
        token = object()
        with self._cond:
            self.ramp.begin()
            self._queue.append((token, owner))
            try:
                while self._eligible() is not token:
                    if stop.is_set():
                        return False
                    self._cond.wait(0.2)
                self._running += 1
                self._by_file[owner] += 1
                self.peak = max(self.peak, self._running)
                return True
            finally:
                self._queue.remove((token, owner))
                self._cond.notify_all()

    def release(self, owner: str, nbytes: int = 0, sent: bool = True) -> None:
        """The request of ``owner`` finished; ``sent``: it moved ``nbytes`` (the ramp measures those)."""
        with self._cond:
            self._running -= 1
            self._by_file[owner] -= 1
            if sent:
                self.ramp.done(nbytes)
            self._cond.notify_all()

    def throttled(self) -> None:
        """The server answered 429 or 503: fewer requests at once from now on."""
        with self._cond:
            self.ramp.throttled()
            self._cond.notify_all()
