"""One retry policy for every network request: how many attempts, how long to wait between them.

A :class:`RetryPolicy` is a value: ``attempts`` tries at most, waits of ``base * 2 ** (n - 1)``
seconds after the n-th failure, never more than ``cap``, each shortened by up to ``jitter``
(a fraction, 0 for none) so that parallel requests do not retry in lockstep. The clock is
injectable (``sleep`` and ``random``), so tests run without waiting.

Which errors are worth another attempt is the caller's to say, as in pooch's retry of only
its known transient errors: :meth:`RetryPolicy.call` takes a predicate (or a tuple of
exception types) and lets every other error through unchanged, at once. When the attempts
run out it raises :class:`RetriesExhausted`, carrying the last error and the attempt count,
for the caller to turn into its own message.

Callers that count failures themselves (a stream that resets the count after progress) use
:meth:`RetryPolicy.exhausted` and :meth:`RetryPolicy.wait` directly.

Imports nothing from the package's folders.
"""

from __future__ import annotations

import random as _random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = ["RetriesExhausted", "RetryPolicy"]

T = TypeVar("T")

RetryIf = Callable[[BaseException], bool] | tuple[type[BaseException], ...]


class RetriesExhausted(Exception):
    """Every attempt failed with a retryable error (or the caller asked to stop): ``error`` is the last."""

    def __init__(self, error: BaseException, attempts: int) -> None:
        super().__init__(f"{type(error).__name__} after {attempts} attempt{'' if attempts == 1 else 's'}: "
                         f"{error}")
        self.error, self.attempts = error, attempts


@dataclass(frozen=True)
class RetryPolicy:
    """At most ``attempts`` tries; after the n-th failure wait ``min(cap, base * 2 ** (n - 1))``
    seconds, shortened by a random fraction of at most ``jitter``."""

    attempts: int = 5
    base: float = 0.5
    cap: float = 20.0
    jitter: float = 0.5
    sleep: Callable[[float], None] = field(default=time.sleep, repr=False, compare=False)
    random: Callable[[], float] = field(default=_random.random, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {self.attempts}")
        if self.base < 0 or self.cap < 0 or not 0 <= self.jitter <= 1:
            raise ValueError("base and cap must be 0 or more, jitter between 0 and 1")

    def delay(self, failures: int) -> float:
        """Seconds to wait after ``failures`` failures in a row (1 for the first)."""
        full = min(self.cap, self.base * 2 ** max(0, failures - 1))
        return float(full * (1 - self.jitter * self.random()))

    def exhausted(self, failures: int) -> bool:
        """True when ``failures`` failures in a row leave no attempt."""
        return failures >= self.attempts

    def wait(self, failures: int) -> float:
        """Sleep :meth:`delay` seconds; returns how long."""
        seconds = self.delay(failures)
        self.sleep(seconds)
        return seconds

    def call(self, fn: Callable[[], T], *, retry_if: RetryIf,
             on_retry: Callable[[BaseException, int, float], None] | None = None,
             stop: Callable[[], bool] | None = None) -> T:
        """``fn()`` until it returns. An error ``retry_if`` accepts is retried after a wait (``on_retry``
        sees it, the attempt number and the wait first); any other error propagates at once. Raises
        :class:`RetriesExhausted` after the last attempt, or sooner when ``stop()`` turns true."""
        accept = retry_if if callable(retry_if) else _instance_of(retry_if)
        attempt = 1
        while True:
            try:
                return fn()
            except Exception as exc:
                if not accept(exc):
                    raise
                if self.exhausted(attempt) or (stop is not None and stop()):
                    raise RetriesExhausted(exc, attempt) from exc
                seconds = self.delay(attempt)
                if on_retry is not None:
                    on_retry(exc, attempt, seconds)
                self.sleep(seconds)
                attempt += 1


def _instance_of(types: tuple[type[BaseException], ...]) -> Callable[[BaseException], bool]:
    def accept(exc: BaseException) -> bool:
        return isinstance(exc, types)

    return accept
