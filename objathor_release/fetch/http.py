"""HTTP for downloads: requests with redirects and statuses checked, bounded retries, resumable streams.

The cut: this module turns URLs into checked responses and bytes; the wire
(settings, pooled connections, header deadline, throughput floor) is
:mod:`.transport`, whole files fetched in parallel pieces are :mod:`.ranges`.

One :class:`Http` (over a urllib3 PoolManager with ``retries=False``) is shared
by a whole download. Retries live here, pooch style: only connection errors,
timeouts, cut bodies, too slow transfers and the statuses in ``RETRY_STATUS``
are retried, waiting as the config's :class:`~objathor_release.retry.RetryPolicy`
says, at most ``HttpConfig.attempts`` times in a row without real progress
(``HttpConfig.progress_bytes``). :meth:`Http.stream` is the single-stream body
reader: a cut body resumes from the byte it stopped at with ``Range`` and
``If-Range`` (the ETag, else Last-Modified), so nothing is fetched twice; if the
server says the file changed meanwhile, :class:`ResourceChanged` tells the
caller to start that file over. Every read goes through the throughput meter,
so a server dripping a byte every few seconds is "too slow", never a hang.
Redirects are followed here (never by urllib3), only to http(s) URLs and never
from https down to http.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import urllib3

from objathor_release.errors import InputError, TransferError, UsageError
from objathor_release.fetch.transport import (
    RETRY_STATUS,
    RETRYABLE,
    HttpConfig,
    RateMeter,
    RetryableStatus,
    TooSlow,
    discard,
    pool_manager,
    read_some,
)
from objathor_release.retry import RetriesExhausted
from objathor_release.settings import MiB, format_size

__all__ = ["RETRY_STATUS", "AccessDenied", "Http", "HttpConfig", "Info", "NotFound", "RangeRefused",
           "RangesIgnored", "ResourceChanged", "check_range", "redirect_target", "response_info"]

T = TypeVar("T")
MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class NotFound(TransferError):
    """The server answered 404: the file is not there."""

    def __init__(self, url: str, status: int) -> None:
        super().__init__(f"{url} was not found (HTTP {status})")
        self.url, self.status = url, status


class AccessDenied(UsageError):
    """The server answered 401 or 403: the file may exist, but we may not read it."""

    def __init__(self, url: str, status: int) -> None:
        if url.startswith("s3://"):  # a signed request: the credentials are the problem
            text = (f"access denied (HTTP {status}) for {url}: the credentials may not read it; check "
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or R2_ACCESS_KEY_ID and "
                    "R2_SECRET_ACCESS_KEY, or --profile), their access to the bucket, and --endpoint-url")
        else:
            text = (f"access denied: the bucket is private (HTTP {status} for {url}): download over the "
                    "S3 API with credentials: pass --base-url s3://BUCKET/PREFIX and --endpoint-url URL "
                    "(or set AWS_ENDPOINT_URL or R2_ACCOUNT_ID), with AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY set (or --profile)")
        super().__init__(text)
        self.url, self.status = url, status


class ResourceChanged(TransferError):
    """The file changed on the server between two requests (If-Range failed)."""


class RangesIgnored(TransferError):
    """A Range request answered with the whole file (HTTP 200) where a part was asked for."""


class RangeRefused(TransferError):
    """The server answered 416 to a Range request: the file is shorter than the range."""


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


def _without_query(url: str) -> str:
    """``url`` cut at its query or fragment: what may be shown of a URL that answers a signed request
    (a server may echo the request's signature, key id and token back in a Location)."""
    return re.split(r"[?#]", url, maxsplit=1)[0]


def redirect_target(url: str, where: str, location: str, *, hide_query: bool = False) -> str:
    """Where a redirect from ``where`` to ``location`` goes; refuse anything but http(s), and downgrades.
    ``hide_query``: the chain began with a signed request, so a refused target is shown without its
    query string."""
    try:
        target = urllib.parse.urljoin(where, location.strip())
        scheme = urllib.parse.urlsplit(target).scheme.lower()
    except ValueError:
        target, scheme = location, ""
    shown = _shown(_without_query(target) if hide_query else target)
    if scheme not in ("http", "https"):
        raise InputError(f"{url} redirected to {shown!r}, which is not an http:// or https:// URL: "
                         "refused; check --base-url")
    if scheme == "http" and urllib.parse.urlsplit(where).scheme.lower() == "https":
        raise InputError(f"{url} redirected from https to {shown!r}, plain http: refused; check "
                         "--base-url")
    return target


class Http:
    """A pooled urllib3 client with the retry policy; safe to share between threads."""

    def __init__(self, config: HttpConfig | None = None, pool: urllib3.PoolManager | None = None,
                 signer: Callable[[str], str] | None = None) -> None:
        self.config = config or HttpConfig()
        self.pool = pool or pool_manager(self.config)
        #: turns an ``s3://BUCKET/KEY`` URL into the signed URL to send, just before each request
        #: (:class:`objathor_release.s3.presign.Presigner`); the caller only ever sees the s3:// form
        self.signer = signer

    def _address(self, url: str) -> str:
        """The URL to send for ``url``: signed afresh for an ``s3://`` one, else itself."""
        if not url.startswith("s3://"):
            return url
        if self.signer is None:
            raise UsageError(f"{url}: an s3:// URL needs S3 credentials and an endpoint: pass --base-url "
                             "s3://BUCKET/PREFIX to download with them")
        return self.signer(url)

    # ------------------------------------------------------------------ single requests

    def request(self, url: str, *, method: str = "GET", start: int = 0, end: int | None = None,
                validator: str | None = None) -> urllib3.BaseHTTPResponse:
        """One attempt. Returns a streaming response with status 200 or 206; raises otherwise."""
        headers = {}
        if start or end is not None:
            headers["Range"] = f"bytes={start}-{'' if end is None else end}"
            if validator:
                headers["If-Range"] = validator
        where = self._address(url)
        signed = where != url  # sticky for the whole chain: a Location may echo the signature
        for _ in range(MAX_REDIRECTS + 1):
            try:
                resp = self.pool.request(method, where, headers=headers, preload_content=False,
                                         decode_content=False, redirect=False)
            except urllib3.exceptions.NameResolutionError as exc:
                if "temporary" in str(exc).lower():  # EAI_AGAIN: the resolver may answer next time
                    raise
                raise TransferError(f"{url}: {_describe(exc)}: check --base-url and the network") from None
            except RETRYABLE:
                raise
            except urllib3.exceptions.LocationValueError as exc:
                shown = _shown(_without_query(where)) if signed else _shown(where)  # no signature shown
                raise InputError(f"{url}: cannot request {shown!r} ({exc}): check "
                                 "--base-url") from None
            except urllib3.exceptions.HTTPError as exc:
                raise TransferError(f"{url}: {_describe(exc)}: check --base-url and the network") from None
            location = resp.headers.get("Location") if resp.status in _REDIRECTS else None
            if not location:
                break
            discard(resp)
            where = redirect_target(url, where, location, hide_query=signed)
        else:
            raise TransferError(f"{url}: more than {MAX_REDIRECTS} redirects: check --base-url")
        if resp.status in (200, 206):
            return resp
        status = resp.status
        discard(resp)
        if status == 404:
            raise NotFound(url, status)
        if status in (401, 403):
            raise AccessDenied(url, status)
        if status in RETRY_STATUS:
            raise RetryableStatus(status)
        if status == 416:
            raise RangeRefused(f"{url}: the server refused byte range {start}-{'' if end is None else end} "
                               "(HTTP 416): the file on the server is shorter than expected; run the "
                               "command again, or tell the publisher if it persists")
        raise TransferError(f"{url} answered HTTP {status}: check --base-url and --version")

    def _failed(self, url: str, exc: BaseException, failures: int) -> None:
        """After the ``failures``-th failure in a row: give up with a clear error, or wait."""
        policy = self.config.retry
        if policy.exhausted(failures):
            raise self._gave_up(url, exc, failures) from None
        policy.wait(failures)

    def _gave_up(self, url: str, exc: BaseException, failures: int) -> TransferError:
        tries = f"{failures} attempt{'' if failures == 1 else 's'} in a row without progress"
        slow = _slow(exc, self.config)
        if slow:
            return TransferError(f"{url}: the server is too slow ({slow}; {tries}): run the command again "
                                 "later to resume where it stopped")
        return TransferError(f"{url}: {_describe(exc)} ({tries}): check the network and run the command "
                             "again to resume")

    def retrying(self, url: str, attempt: Callable[[], T]) -> T:
        """Call ``attempt`` until it returns, retrying only the errors we know are passing."""
        try:
            return self.config.retry.call(attempt, retry_if=RETRYABLE)
        except RetriesExhausted as exc:
            raise self._gave_up(url, exc.error, exc.attempts) from None

    def info(self, url: str) -> Info:
        """Size, validator and type of ``url`` (with retries); raises NotFound when it is not there.

        Asks with ``GET Range: bytes=0-0`` rather than HEAD: some S3 servers and
        bucket policies allow GetObject but answer HEAD differently.
        """
        def attempt() -> Info:
            resp = self.request(url, start=0, end=0)
            try:
                if resp.status == 206:
                    check_range(url, resp, 0, None, None)
                return response_info(url, resp)
            finally:
                discard(resp)
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
                info = response_info(url, resp)
                if check is not None:
                    check(info)
                if info.size is not None and info.size > limit:
                    raise too_big(f"{info.size} bytes")
                meter = RateMeter(self.config)
                chunks: list[bytes] = []
                got = 0
                while got <= limit:
                    data = read_some(resp, min(self.config.read_size, limit + 1 - got))
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
                discard(resp)
        return self.retrying(url, attempt)

    # ------------------------------------------------------------------ streaming with resume

    def stream(self, url: str, *, start: int = 0, end: int | None = None, validator: str | None = None,
               on_open: Callable[[Info], None] | None = None, stop: threading.Event | None = None,
               size: int | None = None, ranged: bool = False,
               on_retry: Callable[[BaseException], None] | None = None) -> Iterator[bytes]:
        """Yield the bytes of ``url`` from ``start`` to ``end`` (inclusive) in ``read_size`` pieces.

        A cut connection, a too slow transfer or a retryable status reopens at
        the next byte with Range and If-Range; failures in a row without
        ``progress_bytes`` between them are bounded by ``attempts``. ``on_open``
        sees the first response's Info (to check its type and size before any
        byte is used). Never yields a byte past ``end``. ``size``, when known, is
        the file's full size: a 206 announcing another total means it changed.
        ``ranged``: a 200 answering a Range is :class:`RangesIgnored` instead of
        read and dropped up to ``start`` (one piece of many must not cost the file).
        """
        pos = start
        failures = 0
        failed_at = start
        resp: urllib3.BaseHTTPResponse | None = None
        info: Info | None = None
        read_size = self.config.read_size
        meter = RateMeter(self.config)
        try:
            while end is None or pos <= end:
                if stop is not None and stop.is_set():
                    return
                try:
                    if resp is None:
                        resp = self.request(url, start=pos, end=end, validator=validator)
                        meter.reset()
                        skip = check_range(url, resp, pos, validator, info.size if info else size)
                        if skip and ranged:
                            raise RangesIgnored(f"{url}: the server answered a byte range with the whole "
                                                "file (HTTP 200)")
                        if info is None:
                            info = response_info(url, resp)
                            validator = validator or info.validator
                            if on_open is not None:
                                on_open(info)
                        _skip(resp, skip, meter)
                    data = read_some(resp, read_size if end is None else min(read_size, end + 1 - pos))
                    if not data:
                        expected = end + 1 if end is not None else (info.size if info else None)
                        if expected is None or pos >= expected:
                            return
                        raise urllib3.exceptions.ProtocolError(f"closed at byte {pos} of {expected}")
                    meter.add(len(data))
                except RETRYABLE as exc:
                    if resp is not None:
                        discard(resp)
                        resp = None
                    if pos - failed_at >= self.config.progress_bytes:
                        failures = 0
                    failures += 1
                    failed_at = pos
                    if on_retry is not None:
                        on_retry(exc)
                    self._failed(url, exc, failures)
                    continue
                pos += len(data)
                handed = time.monotonic()
                yield data
                meter.pause(time.monotonic() - handed)
        finally:
            if resp is not None:
                discard(resp)

    def close(self) -> None:
        self.pool.clear()

def _slow(exc: BaseException, config: HttpConfig) -> str:
    """Why ``exc`` means the server is too slow ("" when it does not)."""
    if isinstance(exc, TooSlow):
        return str(exc)
    if isinstance(exc, urllib3.exceptions.ReadTimeoutError):
        m = re.search(r"read timeout=([0-9.]+)", str(exc))
        waited = float(m.group(1)) if m else config.stall_timeout
        return f"waited more than {waited:g} s for data"
    return ""


def _describe(exc: BaseException) -> str:
    """What went wrong, in words: urllib3 files refused connections and DNS failures under its
    TimeoutError (NewConnectionError subclasses ConnectTimeoutError), so test those first."""
    if isinstance(exc, RetryableStatus):
        return f"the server answered HTTP {exc.status}"
    if isinstance(exc, urllib3.exceptions.NameResolutionError):
        return f"cannot resolve the host name {_host_of(exc)!r} (DNS)"
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        reason = _errno_text(exc)
        host = _host_of(exc)
        return f"cannot connect to {host}" + (f" ({reason})" if reason else "")
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):
        return "timed out connecting"
    if isinstance(exc, urllib3.exceptions.TimeoutError):
        return "timed out"
    text = str(exc).split("\n", 1)[0]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _host_of(exc: urllib3.exceptions.NewConnectionError) -> str:
    conn = getattr(exc, "conn", None)
    host, port = getattr(conn, "host", None), getattr(conn, "port", None)
    if host is None:
        return "the server"
    return f"{host}:{port}" if port and not isinstance(exc, urllib3.exceptions.NameResolutionError) else host


def _errno_text(exc: BaseException) -> str:
    """"connection refused" and the like, from the OSError urllib3 wraps (or its message)."""
    text = str(exc)
    m = re.search(r"\[Errno -?\d+\] ([^)\]]+)", text)
    return m.group(1).strip().lower() if m else ""


def response_info(url: str, resp: urllib3.BaseHTTPResponse) -> Info:
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


def check_range(url: str, resp: urllib3.BaseHTTPResponse, start: int, validator: str | None,
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


def _skip(resp: urllib3.BaseHTTPResponse, n: int, meter: RateMeter) -> None:
    while n > 0:
        data = read_some(resp, min(n, 4 * MiB))
        if not data:
            raise urllib3.exceptions.ProtocolError("connection closed while skipping to the resume point")
        meter.add(len(data))
        n -= len(data)
