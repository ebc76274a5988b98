"""The wire under :mod:`.http`: settings, pooled connections with a header deadline, a throughput floor.

The cut: this module knows sockets and urllib3 responses, never the files of a
release. :class:`HttpConfig` holds every tunable of a download (timeouts, the
retry policy of :mod:`objathor_release.retry`, the minimum rate, piece sizes).
:func:`pool_manager` builds the one urllib3 PoolManager a download shares
(``retries=False``: retries are the caller's), whose connections give the status
line and headers a deadline of their own, enforced by shutting the socket down,
so a server dripping its headers is cut off. :class:`RateMeter` turns a
transfer slower than ``min_rate`` over ``rate_window`` into :class:`TooSlow`.
:func:`read_some` and :func:`discard` are how a body is read and let go.
``RETRYABLE`` lists the errors worth another attempt.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from objathor_release._version import __version__
from objathor_release.errors import UsageError
from objathor_release.retry import RetryPolicy
from objathor_release.settings import MiB, format_size, parse_size

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
RETRY_ERRORS: tuple[type[BaseException], ...] = (
    urllib3.exceptions.TimeoutError,  # connect and read timeouts
    urllib3.exceptions.NewConnectionError,  # refused, unreachable
    urllib3.exceptions.ProtocolError,  # reset, cut body (IncompleteRead)
    http.client.HTTPException,
    ConnectionError,
)


class RetryableStatus(Exception):
    """A status worth another attempt (one of ``RETRY_STATUS``)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class TooSlow(Exception):
    """Fewer bytes than the minimum rate over a window, or headers past their deadline."""


RETRYABLE: tuple[type[BaseException], ...] = (*RETRY_ERRORS, RetryableStatus, TooSlow)


@dataclass(frozen=True)
class HttpConfig:
    """Tunables for one download; checked once here."""

    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    attempts: int = 5  # tries in a row without real progress before giving up
    backoff: float = 0.5  # first wait in seconds; doubles each time
    max_backoff: float = 15.0
    connections: int = 16  # parallel Range requests for one file (at most, when adaptive)
    adaptive: bool = True  # tars: start with a few connections and add more while the rate grows
    stream_piece: int = 8 * MiB  # bytes per Range request of a streamed tar
    stream_buffer: int = 256 * MiB  # most bytes of a streamed tar held in memory at once
    part_size: int = 32 * MiB  # bytes per Range request
    read_size: int = 4 * MiB  # bytes per read from a response
    min_rate: int = 1024  # bytes per second a transfer must keep up over rate_window (0: no minimum)
    rate_window: float = 30.0  # seconds

    def __post_init__(self) -> None:
        if not 1 <= self.connections <= 64:
            raise UsageError(f"--connections must be 1 to 64, got {self.connections}")
        if self.attempts < 1 or self.connect_timeout <= 0 or self.read_timeout <= 0 or self.backoff < 0:
            raise UsageError("attempts, timeouts and backoff must be positive")
        if self.part_size < 1 * MiB or self.read_size < 64 * 1024:
            raise UsageError("part_size must be at least 1 MiB and read_size at least 64 KiB")
        if self.stream_piece < 64 * 1024 or self.stream_buffer < 4 * self.stream_piece:
            raise UsageError("stream_piece must be at least 64 KiB and stream_buffer at least four pieces")
        if self.min_rate < 0 or self.rate_window <= 0 or self.max_backoff < 0:
            raise UsageError("min_rate must be 0 or more, rate_window and max_backoff positive")

    @classmethod
    def from_env(cls, **overrides: Any) -> HttpConfig:
        """Defaults, then ``OBJATHOR_DOWNLOAD_<NAME>`` (attempts, backoff, max_backoff, timeouts,
        min_rate as a size such as ``1K`` or 0, rate_window in seconds), then overrides."""
        values: dict[str, Any] = {}
        kinds: tuple[tuple[str, Callable[[str], Any]], ...] = (
            ("attempts", int), ("backoff", float), ("max_backoff", float), ("connect_timeout", float),
            ("read_timeout", float), ("rate_window", float), ("min_rate", _rate))
        for name, kind in kinds:
            raw = os.environ.get(f"OBJATHOR_DOWNLOAD_{name.upper()}")
            if raw:
                try:
                    values[name] = kind(raw)
                except (ValueError, UsageError):
                    raise UsageError(f"OBJATHOR_DOWNLOAD_{name.upper()}={raw!r} is not a number") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def retry(self) -> RetryPolicy:
        """``attempts`` failures in a row at most; waits doubling from ``backoff`` up to ``max_backoff``."""
        return RetryPolicy(attempts=self.attempts, base=self.backoff, cap=self.max_backoff, jitter=0.0)

    def wait(self, failures: int) -> float:
        return self.retry.delay(failures)

    @property
    def stall_timeout(self) -> float:
        """Longest wait for any one read or for the response headers."""
        return min(self.read_timeout, self.rate_window) if self.min_rate else self.read_timeout

    @property
    def progress_bytes(self) -> int:
        """Bytes a stream must bring between two failures for them not to count as "in a row"."""
        return max(1, int(self.min_rate * self.rate_window))


def _rate(text: str) -> int:
    return 0 if text.strip() == "0" else parse_size(text)


class RateMeter:
    """Bytes over tumbling windows of ``rate_window`` seconds; too few raise :class:`TooSlow`."""

    def __init__(self, config: HttpConfig) -> None:
        self.window = config.rate_window
        self.rate = config.min_rate
        self.reset()

    def reset(self) -> None:
        self.started = time.monotonic()
        self.got = 0

    def pause(self, seconds: float) -> None:
        """Leave out time the consumer held the bytes (a slow disk is not a slow server)."""
        self.started += seconds

    def add(self, n: int) -> None:
        self.got += n
        if not self.rate:
            return
        elapsed = time.monotonic() - self.started
        if elapsed >= self.window:
            if self.got < self.rate * elapsed:
                raise TooSlow(f"{self.got} bytes in {elapsed:.1f} s, under the minimum of "
                               f"{format_size(self.rate)}/s")
            self.reset()


# ---------------------------------------------------------------------- connections with a header deadline


class _Guard:
    """Shut ``sock`` down after ``seconds`` unless cancelled first: ends any blocking read on it."""

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self.fired = threading.Event()

        def expire() -> None:
            self.fired.set()
            with contextlib.suppress(OSError):
                socket.socket.shutdown(sock, socket.SHUT_RDWR)  # the raw socket, under any TLS layer

        self.timer = threading.Timer(seconds, expire)
        self.timer.daemon = True
        self.timer.start()

    def cancel(self) -> None:
        self.timer.cancel()


def _seconds(timeout: Any) -> float | None:
    return float(timeout) if isinstance(timeout, (int, float)) and timeout > 0 else None


class _HeaderDeadline:
    """Mixed into urllib3's connections: the whole status line and headers within ``self.timeout``.

    The socket's timeout bounds each ``recv``; a server sending its headers a
    byte at a time would pass that forever, so a timer shuts the socket down at
    the deadline and the request fails as too slow. (A TLS handshake needs no
    such guard: CPython's ssl module already bounds the whole handshake by the
    socket's timeout.)
    """

    timeout: Any
    sock: socket.socket | None

    def getresponse(self) -> Any:
        limit = _seconds(self.timeout)
        sock = self.sock
        if limit is None or sock is None:
            return super().getresponse()  # type: ignore[misc]
        guard = _Guard(sock, limit)
        try:
            return super().getresponse()  # type: ignore[misc]
        except Exception:
            if guard.fired.is_set():
                raise TooSlow(f"the response headers took more than {limit:g} s") from None
            raise
        finally:
            guard.cancel()


class _Conn(_HeaderDeadline, HTTPConnection):
    pass


class _TLSConn(_HeaderDeadline, HTTPSConnection):
    pass


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Conn


class _TLSPool(HTTPSConnectionPool):
    ConnectionCls = _TLSConn


def pool_manager(config: HttpConfig) -> urllib3.PoolManager:
    pool = urllib3.PoolManager(
        num_pools=8, maxsize=config.connections + 2, block=False, retries=False,
        timeout=urllib3.Timeout(connect=config.connect_timeout, read=config.stall_timeout),
        headers={"User-Agent": f"objathor-release/{__version__}", "Accept-Encoding": "identity"},
    )
    pool.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}
    return pool


def read_some(resp: urllib3.BaseHTTPResponse, limit: int) -> bytes:
    """What has arrived, up to ``limit`` bytes (blocking only until something arrives).

    ``read1`` (urllib3 2) keeps a slow link's bytes moving on to the extractor
    and the progress bar instead of waiting for ``limit`` bytes to pile up, and
    lets the throughput meter see every byte as it comes.
    """
    read1 = getattr(resp, "read1", None)
    if read1 is not None:
        data: bytes = read1(limit, decode_content=False)
        return data
    return resp.read(limit, decode_content=False)  # pragma: no cover - urllib3 1.26


def discard(resp: urllib3.BaseHTTPResponse) -> None:
    """Give the connection back when its body was read to the end, else close it.

    Never drains what is left: a server dripping the rest of an error page
    would hold us for as long as it liked.
    """
    with contextlib.suppress(Exception):
        if getattr(resp, "length_remaining", None) == 0:
            resp.drain_conn()
        else:
            resp.close()
    with contextlib.suppress(Exception):
        resp.release_conn()

