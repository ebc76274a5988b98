"""HTTP for downloads: pooled urllib3, explicit timeouts, bounded retries, Range + If-Range resume.

One :class:`Http` (a urllib3 PoolManager with ``retries=False``) is shared by a
whole download. Retries live here, pooch style: only connection errors,
timeouts, cut bodies, too slow transfers and the statuses in ``RETRY_STATUS``
are retried, with exponential backoff, at most ``HttpConfig.attempts`` times in
a row without real progress (``HttpConfig.progress_bytes``). A cut body resumes
from the byte it stopped at with ``Range`` and ``If-Range`` (the ETag, else
Last-Modified), so nothing is fetched twice; if the server says the file
changed meanwhile, :class:`ResourceChanged` tells the caller to start that file
over.

No server can hold a download forever. A read timeout bounds one ``recv``, but
a server that drips a byte every few seconds never trips it, so every read path
also goes through a throughput meter: fewer than ``min_rate`` bytes per second
over a ``rate_window`` is a failure (retried like a cut connection, then
reported as "too slow"). The response headers have a deadline of their own,
enforced by shutting the socket down, so a server dripping its headers is cut
off too. Redirects are followed here (never by urllib3), only to http(s) URLs
and never from https down to http.

:func:`download_file` fetches one file with parallel Range requests into a
preallocated ``NAME.part`` beside the target; a ``NAME.part.json`` beside it
records the finished pieces and the validator, so an interrupted run continues
where it stopped.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import os
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from objathor_release._version import __version__
from objathor_release.errors import DiskFullError, InputError, TransferError, UsageError
from objathor_release.progress import Progress
from objathor_release.settings import MiB, format_size, parse_size

RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
RETRY_ERRORS: tuple[type[BaseException], ...] = (
    urllib3.exceptions.TimeoutError,  # connect and read timeouts
    urllib3.exceptions.NewConnectionError,  # refused, unreachable
    urllib3.exceptions.ProtocolError,  # reset, cut body (IncompleteRead)
    http.client.HTTPException,
    ConnectionError,
)
T = TypeVar("T")
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")
_DISK_FULL = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


class NotFound(TransferError):
    """The server answered 404: the file is not there."""

    def __init__(self, url: str, status: int) -> None:
        super().__init__(f"{url} was not found (HTTP {status})")
        self.url, self.status = url, status


class AccessDenied(UsageError):
    """The server answered 401 or 403: the file may exist, but we may not read it."""

    def __init__(self, url: str, status: int) -> None:
        super().__init__(f"access denied (HTTP {status}) for {url}: the bucket may be private; check "
                         "--base-url and --version, or ask the publisher to allow public reads")
        self.url, self.status = url, status


class ResourceChanged(TransferError):
    """The file changed on the server between two requests (If-Range failed)."""


class RangeRefused(TransferError):
    """The server answered 416 to a Range request: the file is shorter than the range."""


class _RetryableStatus(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class _TooSlow(Exception):
    """Fewer bytes than the minimum rate over a window, or headers past their deadline."""


_RETRYABLE: tuple[type[BaseException], ...] = (*RETRY_ERRORS, _RetryableStatus, _TooSlow)


def disk_full(path: Path | str, needed: int | None) -> DiskFullError:
    """The one line for ENOSPC: the path, the space needed (when known), what to do."""
    need = f" ({format_size(needed)} needed in all)" if needed else ""
    return DiskFullError(f"no space left on the disk of {path}{need}: free some space or pass --path on a "
                         "larger disk, then run the command again")


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL


@dataclass(frozen=True)
class HttpConfig:
    """Tunables for one download; checked once here."""

    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    attempts: int = 5  # tries in a row without real progress before giving up
    backoff: float = 0.5  # first wait in seconds; doubles each time
    max_backoff: float = 15.0
    connections: int = 8  # parallel Range requests for one file
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

    def wait(self, failures: int) -> float:
        return float(min(self.backoff * 2 ** (failures - 1), self.max_backoff))

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


class _Meter:
    """Bytes over tumbling windows of ``rate_window`` seconds; too few raise :class:`_TooSlow`."""

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
                raise _TooSlow(f"{self.got} bytes in {elapsed:.1f} s, under the minimum of "
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
                raise _TooSlow(f"the response headers took more than {limit:g} s") from None
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


def _pool_manager(config: HttpConfig) -> urllib3.PoolManager:
    pool = urllib3.PoolManager(
        num_pools=8, maxsize=config.connections + 2, block=False, retries=False,
        timeout=urllib3.Timeout(connect=config.connect_timeout, read=config.stall_timeout),
        headers={"User-Agent": f"objathor-release/{__version__}", "Accept-Encoding": "identity"},
    )
    pool.pool_classes_by_scheme = {"http": _Pool, "https": _TLSPool}
    return pool


@dataclass
class Info:
    """What a response says about the file: full size, validator for If-Range, content type."""

    url: str
    size: int | None
    validator: str | None
    content_type: str
    ranges: bool


def _validator(resp: urllib3.BaseHTTPResponse) -> str | None:
    etag = resp.headers.get("ETag")
    if etag and not etag.startswith("W/"):
        return str(etag)
    modified = resp.headers.get("Last-Modified")
    return str(modified) if modified else None


def _shown(url: str, limit: int = 200) -> str:
    """A URL from a server, safe to print: no control characters, bounded length."""
    text = "".join(c if c.isprintable() else "?" for c in url)
    return text if len(text) <= limit else text[:limit] + "..."


def _redirect_target(url: str, where: str, location: str) -> str:
    """Where a redirect from ``where`` to ``location`` goes; refuse anything but http(s), and downgrades."""
    try:
        target = urllib.parse.urljoin(where, location.strip())
        scheme = urllib.parse.urlsplit(target).scheme.lower()
    except ValueError:
        target, scheme = location, ""
    if scheme not in ("http", "https"):
        raise InputError(f"{url} redirected to {_shown(target)!r}, which is not an http:// or https:// URL: "
                         "refused; check --base-url")
    if scheme == "http" and urllib.parse.urlsplit(where).scheme.lower() == "https":
        raise InputError(f"{url} redirected from https to {_shown(target)!r}, plain http: refused; check "
                         "--base-url")
    return target


class Http:
    """A pooled urllib3 client with the retry policy; safe to share between threads."""

    def __init__(self, config: HttpConfig | None = None, pool: urllib3.PoolManager | None = None) -> None:
        self.config = config or HttpConfig()
        self.pool = pool or _pool_manager(self.config)

    # ------------------------------------------------------------------ single requests

    def request(self, url: str, *, method: str = "GET", start: int = 0, end: int | None = None,
                validator: str | None = None) -> urllib3.BaseHTTPResponse:
        """One attempt. Returns a streaming response with status 200 or 206; raises otherwise."""
        headers = {}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end}"
            if validator:
                headers["If-Range"] = validator
        where = url
        for _ in range(MAX_REDIRECTS + 1):
            try:
                resp = self.pool.request(method, where, headers=headers, preload_content=False,
                                         decode_content=False, redirect=False)
            except _RETRYABLE:
                raise
            except urllib3.exceptions.LocationValueError as exc:
                raise InputError(f"{url}: cannot request {_shown(where)!r} ({exc}): check "
                                 "--base-url") from None
            except urllib3.exceptions.HTTPError as exc:
                raise TransferError(f"{url}: {_describe(exc)}: check --base-url and the network") from None
            location = resp.headers.get("Location") if resp.status in _REDIRECTS else None
            if not location:
                break
            _discard(resp)
            where = _redirect_target(url, where, location)
        else:
            raise TransferError(f"{url}: more than {MAX_REDIRECTS} redirects: check --base-url")
        if resp.status in (200, 206):
            return resp
        status = resp.status
        _discard(resp)
        if status == 404:
            raise NotFound(url, status)
        if status in (401, 403):
            raise AccessDenied(url, status)
        if status in RETRY_STATUS:
            raise _RetryableStatus(status)
        if status == 416:
            raise RangeRefused(f"{url}: the server refused byte range {start}-{'' if end is None else end} "
                               "(HTTP 416): the file on the server is shorter than expected; run the "
                               "command again, or tell the publisher if it persists")
        raise TransferError(f"{url} answered HTTP {status}: check --base-url and --version")

    def _failed(self, url: str, exc: BaseException, failures: int) -> None:
        """After the ``failures``-th failure in a row: give up with a clear error, or wait."""
        if failures >= self.config.attempts:
            tries = f"{failures} attempt{'' if failures == 1 else 's'} in a row without progress"
            slow = _slow(exc, self.config)
            if slow:
                raise TransferError(f"{url}: the server is too slow ({slow}; {tries}): run the command again "
                                    "later to resume where it stopped") from None
            raise TransferError(f"{url}: {_describe(exc)} ({tries}): check the network and run the command "
                                "again to resume") from None
        time.sleep(self.config.wait(failures))

    def retrying(self, url: str, attempt: Callable[[], T]) -> T:
        """Call ``attempt`` until it returns, retrying only the errors we know are passing."""
        failures = 0
        while True:
            try:
                return attempt()
            except _RETRYABLE as exc:
                failures += 1
                self._failed(url, exc, failures)

    def info(self, url: str) -> Info:
        """Size, validator and type of ``url`` (with retries); raises NotFound when it is not there.

        Asks with ``GET Range: bytes=0-0`` rather than HEAD: some S3 servers and
        bucket policies allow GetObject but answer HEAD differently.
        """
        def attempt() -> Info:
            resp = self.request(url, start=0, end=0)
            try:
                if resp.status == 206:
                    _check_range(url, resp, 0, None, None)
                return _info(url, resp)
            finally:
                _discard(resp)
        return self.retrying(url, attempt)

    def fetch_bytes(self, url: str, limit: int = 256 * MiB,
                    check: Callable[[Info], None] | None = None) -> tuple[bytes, Info]:
        """The whole body of a small file (manifest.json), with retries; at most ``limit`` bytes."""
        def too_big(size: str) -> InputError:
            return InputError(f"{url} is {size}, more than the {format_size(limit)} expected for this file: "
                              "check --base-url, or tell the release's publisher")

        def attempt() -> tuple[bytes, Info]:
            resp = self.request(url)
            try:
                info = _info(url, resp)
                if check is not None:
                    check(info)
                if info.size is not None and info.size > limit:
                    raise too_big(f"{info.size} bytes")
                meter = _Meter(self.config)
                chunks: list[bytes] = []
                got = 0
                while got <= limit:
                    data = _read_some(resp, min(self.config.read_size, limit + 1 - got))
                    if not data:
                        break
                    meter.add(len(data))
                    chunks.append(data)
                    got += len(data)
                if got > limit:
                    raise too_big(f"larger than {limit} bytes")
                if info.size is not None and got != info.size:
                    raise urllib3.exceptions.ProtocolError(f"got {got} of {info.size} bytes")
                return b"".join(chunks), info
            finally:
                _discard(resp)
        return self.retrying(url, attempt)

    # ------------------------------------------------------------------ streaming with resume

    def stream(self, url: str, *, start: int = 0, end: int | None = None, validator: str | None = None,
               on_open: Callable[[Info], None] | None = None, stop: threading.Event | None = None,
               size: int | None = None) -> Iterator[bytes]:
        """Yield the bytes of ``url`` from ``start`` to ``end`` (inclusive) in ``read_size`` pieces.

        A cut connection, a too slow transfer or a retryable status reopens at
        the next byte with Range and If-Range; failures in a row without
        ``progress_bytes`` between them are bounded by ``attempts``. ``on_open``
        sees the first response's Info (to check its type and size before any
        byte is used). Never yields a byte past ``end``. ``size``, when known, is
        the file's full size: a 206 announcing another total means it changed.
        """
        pos = start
        failures = 0
        failed_at = start
        resp: urllib3.BaseHTTPResponse | None = None
        info: Info | None = None
        read_size = self.config.read_size
        meter = _Meter(self.config)
        try:
            while end is None or pos <= end:
                if stop is not None and stop.is_set():
                    return
                try:
                    if resp is None:
                        resp = self.request(url, start=pos, end=end, validator=validator)
                        meter.reset()
                        skip = _check_range(url, resp, pos, validator, info.size if info else size)
                        if info is None:
                            info = _info(url, resp)
                            validator = validator or info.validator
                            if on_open is not None:
                                on_open(info)
                        _skip(resp, skip, meter)
                    data = _read_some(resp, read_size if end is None else min(read_size, end + 1 - pos))
                    if not data:
                        expected = end + 1 if end is not None else (info.size if info else None)
                        if expected is None or pos >= expected:
                            return
                        raise urllib3.exceptions.ProtocolError(f"closed at byte {pos} of {expected}")
                    meter.add(len(data))
                except _RETRYABLE as exc:
                    if resp is not None:
                        _discard(resp)
                        resp = None
                    if pos - failed_at >= self.config.progress_bytes:
                        failures = 0
                    failures += 1
                    failed_at = pos
                    self._failed(url, exc, failures)
                    continue
                pos += len(data)
                handed = time.monotonic()
                yield data
                meter.pause(time.monotonic() - handed)
        finally:
            if resp is not None:
                _discard(resp)

    def close(self) -> None:
        self.pool.clear()


def _read_some(resp: urllib3.BaseHTTPResponse, limit: int) -> bytes:
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


def _slow(exc: BaseException, config: HttpConfig) -> str:
    """Why ``exc`` means the server is too slow ("" when it does not)."""
    if isinstance(exc, _TooSlow):
        return str(exc)
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        m = re.search(r"read timeout=([0-9.]+)", str(exc))
        waited = float(m.group(1)) if m else config.stall_timeout
        return f"waited more than {waited:g} s for data"
    return ""


def _describe(exc: BaseException) -> str:
    if isinstance(exc, _RetryableStatus):
        return f"the server answered HTTP {exc.status}"
    if isinstance(exc, urllib3.exceptions.TimeoutError):
        return "timed out"
    text = str(exc).split("\n", 1)[0]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _discard(resp: urllib3.BaseHTTPResponse) -> None:
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


def _info(url: str, resp: urllib3.BaseHTTPResponse) -> Info:
    size: int | None = None
    content_range = resp.headers.get("Content-Range")
    if resp.status == 206 and content_range:
        m = _CONTENT_RANGE.match(content_range.strip())
        if m and m.group(3) != "*":
            size = int(m.group(3))
    elif resp.headers.get("Content-Length", "").isdigit():
        size = int(resp.headers["Content-Length"])
    ranges = resp.status == 206 or resp.headers.get("Accept-Ranges", "").lower() == "bytes"
    ctype = resp.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    return Info(url, size, _validator(resp), ctype, ranges)


def _check_range(url: str, resp: urllib3.BaseHTTPResponse, start: int, validator: str | None,
                 size: int | None) -> int:
    """How many leading bytes of the body to skip to reach ``start`` (raise if the file changed).

    A 206 must say it starts at ``start``, with a sane end and, once the size
    is known, the same total size.
    """
    if resp.status == 206:
        header = resp.headers.get("Content-Range", "").strip()
        m = _CONTENT_RANGE.match(header)
        first, last = (int(m.group(1)), int(m.group(2))) if m else (-1, -1)
        total = int(m.group(3)) if m and m.group(3) != "*" else None
        if not m or first != start or last < first or (total is not None and last >= total):
            raise TransferError(f"{url}: the server sent byte range {_shown(header)!r} for a request "
                                f"starting at byte {start}: it does not serve byte ranges correctly; tell "
                                "its operator, or try again later")
        now = _validator(resp)
        if validator and now and now != validator:
            raise ResourceChanged(f"{url} changed on the server during the download")
        if size is not None and total is not None and total != size:
            raise ResourceChanged(f"{url} changed on the server during the download ({size} bytes, now "
                                  f"{total})")
        return 0
    if start == 0:
        return 0
    now = _validator(resp)
    if validator and now != validator:
        raise ResourceChanged(f"{url} changed on the server during the download")
    return start  # the server ignores Range: read and drop the bytes we already have


def _skip(resp: urllib3.BaseHTTPResponse, n: int, meter: _Meter) -> None:
    while n > 0:
        data = _read_some(resp, min(n, 4 * MiB))
        if not data:
            raise urllib3.exceptions.ProtocolError("connection closed while skipping to the resume point")
        meter.add(len(data))
        n -= len(data)


# ---------------------------------------------------------------------- whole files, in parallel


@dataclass
class _PartState:
    url: str
    size: int
    validator: str | None
    part_size: int
    done: set[int]

    def dump(self) -> str:
        return json.dumps({"url": self.url, "size": self.size, "validator": self.validator,
                           "part_size": self.part_size, "done": sorted(self.done)})


def _load_state(path: Path, url: str) -> _PartState | None:
    try:
        raw = json.loads(path.read_text())
        state = _PartState(raw["url"], int(raw["size"]), raw["validator"], int(raw["part_size"]),
                           {int(i) for i in raw["done"]})
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return None
    if state.size < 0 or state.part_size < 1 or not isinstance(state.validator, str):
        return None
    return state if state.url == url and state.validator else None


def part_paths(target: Path) -> tuple[Path, Path]:
    """``NAME.part`` and ``NAME.part.json`` beside ``target``."""
    return target.with_name(target.name + ".part"), target.with_name(target.name + ".part.json")


def download_file(http: Http, url: str, target: Path, *, check: Callable[[Info], None] | None = None,
                  bar: Progress | None = None) -> Info:
    """Fetch ``url`` into ``target``'s ``.part`` file (not renamed: the caller verifies, then renames).

    Parallel Range requests of ``part_size`` bytes, ``connections`` at a time,
    write into a preallocated file with ``os.pwrite``. ``check(info)`` runs on
    the first response, before anything is written (content type, free space).
    A ``.part`` left by an earlier run continues if the file is unchanged on the
    server (same size and validator, and the server honours If-Range). A full
    disk removes the ``.part`` (and its state) and raises :class:`DiskFullError`.
    """
    part, state_path = part_paths(target)
    sizes: list[int] = []

    def checked(info: Info) -> None:
        if info.size is not None:
            sizes.append(info.size)
        if check is not None:
            check(info)

    try:
        return _download_file(http, url, target, checked, bar)
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        for p in (part, state_path):
            with contextlib.suppress(OSError):
                p.unlink()
        raise disk_full(target.parent, sizes[0] if sizes else None) from None


def _download_file(http: Http, url: str, target: Path, check: Callable[[Info], None] | None,
                   bar: Progress | None) -> Info:
    part, state_path = part_paths(target)
    state = _load_state(state_path, url) if part.exists() else None
    if state is None:
        for p in (part, state_path):
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
    else:
        todo = [i for i in range(_pieces(state.size, state.part_size)) if i not in state.done]
        if not todo:
            return Info(url, state.size, state.validator, "", True)
    piece = state.part_size if state else http.config.part_size
    first = todo[0] if state else 0

    def open_probe() -> tuple[urllib3.BaseHTTPResponse, Info]:
        """The first piece still needed: it also tells the size, the validator and Range support."""
        try:
            r = http.request(url, start=first * piece, end=(first + 1) * piece - 1,
                             validator=state.validator if state else None)
        except RangeRefused:
            if state is None:
                raise
            raise ResourceChanged(f"{url} is shorter than in the last run") from None
        try:
            if r.status == 206:
                _check_range(url, r, first * piece, state.validator if state else None,
                             state.size if state else None)
            info = _info(url, r)
            if state and (r.status != 206 or info.validator != state.validator or info.size != state.size):
                raise ResourceChanged(f"{url} changed since the last run")
            if check is not None:
                check(info)
        except BaseException:
            _discard(r)
            raise
        return r, info

    try:
        resp, info = http.retrying(url, open_probe)
    except ResourceChanged:
        if state is None:
            raise
        for p in (part, state_path):
            p.unlink()
        return _download_file(http, url, target, check, bar)
    if resp.status == 200 or info.size is None or not info.validator:
        _sequential(http, url, part, resp, info, bar)  # no usable Range support: one plain stream
        return info
    size = info.size
    if state is None:
        state = _PartState(url, size, info.validator, piece, set())
        with open(part, "wb") as fh:
            _preallocate(fh.fileno(), size)
        state_path.write_text(state.dump())
        todo = list(range(_pieces(size, piece)))
    elif bar is not None:
        bar.update(sum(min(piece, size - i * piece) for i in state.done))
    _parallel(http, url, part, state_path, state, todo, resp, bar)
    return info


def _parallel(http: Http, url: str, part: Path, state_path: Path, state: _PartState, todo: list[int],
              first_resp: urllib3.BaseHTTPResponse, bar: Progress | None) -> None:
    """Fetch the pieces in ``todo`` (the first from ``first_resp``) into ``part``, recording each."""
    lock = threading.Lock()
    stop = threading.Event()
    size, piece = state.size, state.part_size
    fd = os.open(part, os.O_WRONLY)

    def fetch(index: int, resp: urllib3.BaseHTTPResponse | None) -> None:
        start = index * piece
        end = min(start + piece, size) - 1
        pos = _copy_body(http, resp, fd, start, end, bar) if resp is not None else start
        if pos <= end:
            for data in http.stream(url, start=pos, end=end, validator=state.validator, stop=stop,
                                    size=size):
                _pwrite_all(fd, data, pos)
                pos += len(data)
                if bar is not None:
                    bar.update(len(data))
        if stop.is_set():
            return
        with lock:
            state.done.add(index)
            tmp = state_path.with_name(state_path.name + ".tmp")
            tmp.write_text(state.dump())
            os.replace(tmp, state_path)

    try:
        with ThreadPoolExecutor(max_workers=http.config.connections, thread_name_prefix="range") as pool:
            futures = [pool.submit(fetch, i, first_resp if n == 0 else None) for n, i in enumerate(todo)]
            wait(futures, return_when=FIRST_EXCEPTION)
            if any(f.done() and f.exception() for f in futures):
                stop.set()
                for f in futures:
                    f.cancel()
            for f in futures:
                if not f.cancelled():
                    f.result()
        os.fsync(fd)
    finally:
        stop.set()
        os.close(fd)
        _discard(first_resp)


def _pieces(size: int, piece: int) -> int:
    return max(1, -(-size // piece))


def _copy_body(http: Http, resp: urllib3.BaseHTTPResponse, fd: int, pos: int, end: int,
               bar: Progress | None) -> int:
    """Write what an already-open response delivers up to ``end``; stop quietly at a cut or when it is
    too slow (the caller resumes from the returned position)."""
    meter = _Meter(http.config)
    try:
        while pos <= end:
            data = _read_some(resp, min(http.config.read_size, end + 1 - pos))
            if not data:
                break
            meter.add(len(data))
            _pwrite_all(fd, data, pos)
            pos += len(data)
            if bar is not None:
                bar.update(len(data))
    except _RETRYABLE:
        pass
    finally:
        _discard(resp)
    return pos


def _pwrite_all(fd: int, data: bytes, pos: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, pos)
        view = view[n:]
        pos += n


def _preallocate(fd: int, size: int) -> None:
    if size and hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except OSError as exc:
            if is_disk_full(exc):
                raise
            # e.g. a filesystem without fallocate: a sparse file is fine
    os.ftruncate(fd, size)


def _sequential(http: Http, url: str, part: Path, resp: urllib3.BaseHTTPResponse, info: Info,
                bar: Progress | None) -> None:
    """One plain stream into ``part`` from the start, for a server without usable Range support."""
    with open(part, "wb") as fh:
        pos = _copy_body(http, resp, fh.fileno(), 0, (info.size or 1 << 62) - 1, bar)
        if info.size is None or pos < info.size:
            for data in http.stream(url, start=pos, end=None if info.size is None else info.size - 1,
                                    validator=info.validator, size=info.size):
                _pwrite_all(fh.fileno(), data, pos)
                pos += len(data)
                if bar is not None:
                    bar.update(len(data))
        fh.flush()
        os.fsync(fh.fileno())
