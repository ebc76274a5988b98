"""How many requests to keep in flight: grow while the measured total rate grows, then hold.

Over a long link one connection is capped (round-trip time, window, a per-connection limit), so
the total rate comes from many at once; but past the point where the server or the local link is
the limit, more connections only cost memory and fairness. :class:`Ramp` finds that point the
simple way: start with a few, and after about one request per connection has finished, compare
the rate since the last step with the best so far. A rate at least a tenth higher doubles the
limit (up to ``cap``); anything less keeps the limit where it is for the rest of the run. A
throttling answer (429, 503) halves it and stops the growth.

The clock is injectable, so its decisions are testable without waiting. It does no locking: the
caller holds its own lock around :meth:`Ramp.done` (both users already hold one there).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["GROWTH", "Ramp"]

logger = logging.getLogger(__name__)

GROWTH = 1.10  # the total rate must grow by this much for more requests to be let in flight


@dataclass
class Ramp:
    """The number of requests allowed in flight (``limit``), from ``start`` up to ``cap``.

    ``adaptive=False`` holds ``cap`` from the start. ``what`` names the job in the debug lines.
    """

    start: int
    cap: int
    adaptive: bool = True
    what: str = "transfer"
    clock: Callable[[], float] = time.monotonic
    limit: int = field(init=False)
    frozen: bool = field(init=False, default=False)
    best: float = field(init=False, default=0.0)
    steps: list[tuple[int, float]] = field(init=False, default_factory=list)  # (limit, rate) judged
    _since: float | None = field(init=False, default=None)
    _bytes: int = field(init=False, default=0)
    _done: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.cap = max(1, self.cap)
        self.limit = min(max(1, self.start), self.cap) if self.adaptive else self.cap

    def begin(self) -> None:
        """Start the clock of the first step (else the first :meth:`done` starts it, and counts)."""
        if self._since is None:
            self._since = self.clock()

    def done(self, nbytes: int) -> None:
        """One request finished, having moved ``nbytes``; decide once ``limit`` have since the last step."""
        if self._since is None:
            self._since = self.clock()
        self._bytes += nbytes
        self._done += 1
        if not self.adaptive or self.frozen or self.limit >= self.cap or self._done < self.limit:
            return
        now = self.clock()
        elapsed = now - self._since
        if elapsed <= 0:
            return
        rate = self._bytes / elapsed
        self.steps.append((self.limit, rate))
        if rate >= self.best * GROWTH:
            self.best = rate
            self.limit = min(self.cap, self.limit * 2)
            logger.debug("%s: %.1f MB/s, now %d in flight", self.what, rate / 1e6, self.limit)
        else:
            self.frozen = True
            logger.debug("%s: %.1f MB/s is no faster: staying at %d in flight", self.what, rate / 1e6,
                         self.limit)
        self._since, self._bytes, self._done = now, 0, 0

    def throttled(self) -> None:
        """The server asked to slow down: halve the limit and stop growing."""
        if self.adaptive:
            self.limit = max(1, self.limit // 2)
            self.frozen = True
            logger.debug("%s: the server throttles: down to %d in flight", self.what, self.limit)
