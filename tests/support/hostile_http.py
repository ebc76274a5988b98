"""A misbehaving HTTP server of our own, on 127.0.0.1, for the download tests.

    with HostileServer(root) as server:                 # serves the files under root, with Range
        server.script("assets.tar", Script(drip=(1, 0.2)))   # then misbehaves for chosen paths
        download(base_url=server.url + "/...")
        server.log                                      # every request seen: method, path, headers

A :class:`Script` says what to do for the paths ending with a suffix: answer a
status with a body (an error page, a redirect), drip the body N bytes every T
seconds, drip the headers, stall after the headers or after some bytes, cut the
body, lie in Content-Length or Content-Range, send more than announced, ignore
Range. ``times`` limits it to the first N matching requests.

Every wait is bounded (``max_seconds`` per response) and wakes up at shutdown,
so the server always stops promptly, whatever a test left running.

:class:`SlowHandshake` is a TCP server for ``https://`` URLs that starts a TLS
record and then drips it a byte at a time: a handshake that never finishes.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


@dataclass
class Script:
    status: int | None = None  # answer this status with ``body`` instead of serving the file
    body: bytes | None = None  # the body instead of the file's bytes (the file's if None)
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)  # extra headers (Location, ...)
    ranges: bool = True  # honour Range with 206; False: always 200 with the whole body
    ignore_end: bool = False  # answer a Range from its first byte to the end of the file
    drip: tuple[int, float] | None = None  # send the body N bytes every T seconds
    header_drip: float | None = None  # send the status line and headers a byte every T seconds
    stall_after: int | None = None  # send this many body bytes, then send nothing
    cut_after: int | None = None  # send this many body bytes, then close the connection
    content_length: int | None = None  # announce this Content-Length instead of the true one
    no_length: bool = False  # no Content-Length: the body ends when the connection closes
    content_range: str | None = None  # announce this Content-Range instead of the true one
    extra: bytes = b""  # bytes sent after the body: more than announced
    times: int | None = None  # only the first N matching requests; then the file as it is
    range_prefix: str | None = None  # only requests whose Range starts so ("": those without a Range)


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass

    def do_GET(self) -> None:  # noqa: N802
        srv = self.server
        with srv.lock:
            srv.log.append(Seen(self.command, self.path, dict(self.headers.items())))
            script = srv.take(self.path, self.headers.get("Range", ""))
        self.started = time.monotonic()
        try:
            self._answer(script or Script())
        except (OSError, ValueError):
            self.close_connection = True

    do_HEAD = do_GET  # noqa: N815

    # ------------------------------------------------------------------ the answer

    def _answer(self, s: Script) -> None:
        srv = self.server
        status = s.status
        body = s.body
        etag = ""
        if body is None and status is None:
            path = srv.root / self.path.split("?", 1)[0].lstrip("/")
            if not path.is_file():
                status, body = 404, b"<?xml version='1.0'?><Error><Code>NoSuchKey</Code></Error>"
            else:
                body = path.read_bytes()
                etag = '"' + hashlib.md5(body).hexdigest() + '"'
        status = status or 200
        body = body or b""
        size = len(body)
        headers = {"Content-Type": s.content_type or "application/octet-stream"}
        if etag:
            headers["ETag"] = etag
        part = body
        m = _RANGE.match(self.headers.get("Range", ""))
        if_range = self.headers.get("If-Range")
        if status == 200 and s.ranges and m and (not if_range or if_range == etag):
            first = int(m.group(1))
            last = min(int(m.group(2)) if m.group(2) and not s.ignore_end else size - 1, size - 1)
            if first >= size:
                status, part = 416, b""
                headers["Content-Range"] = f"bytes */{size}"
            else:
                status, part = 206, body[first:last + 1]
                headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        if s.ranges and status in (200, 206):
            headers["Accept-Ranges"] = "bytes"
        if s.content_range is not None:
            headers["Content-Range"] = s.content_range
        if s.no_length:
            headers["Connection"] = "close"
        else:
            headers["Content-Length"] = str(len(part) if s.content_length is None else s.content_length)
        headers.update(s.headers)
        self._head(status, headers, s.header_drip)
        if self.command == "HEAD":
            return
        self._body(part, s)

    def _head(self, status: int, headers: dict[str, str], drip: float | None) -> None:
        lines = [f"HTTP/1.1 {status} {self.responses.get(status, ('X',))[0]}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if drip is None:
            self.wfile.write(raw)
            self.wfile.flush()
            return
        for i in range(len(raw)):
            if not self._wait(drip):
                return
            self.wfile.write(raw[i:i + 1])
            self.wfile.flush()

    def _body(self, part: bytes, s: Script) -> None:
        limit = len(part)
        for n in (s.stall_after, s.cut_after):
            if n is not None:
                limit = min(limit, n)
        step, pause = s.drip if s.drip else (max(1, limit), 0.0)
        sent = 0
        while sent < limit:
            if pause and not self._wait(pause):
                return
            chunk = part[sent:min(limit, sent + step)]
            self.wfile.write(chunk)
            self.wfile.flush()
            sent += len(chunk)
        if s.cut_after is not None and s.cut_after < len(part):
            self._abort()
            return
        if s.stall_after is not None and s.stall_after < len(part):
            self._wait(self.server.max_seconds)  # until shutdown or the per-response bound
            self._abort()
            return
        if s.extra:
            self.wfile.write(s.extra)
            self.wfile.flush()
            self._abort()
        if s.no_length:
            self._abort()

    def _wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; False at shutdown or past the per-response bound."""
        left = self.server.max_seconds - (time.monotonic() - self.started)
        if left <= 0:
            self._abort()
            return False
        if self.server.closing.wait(min(seconds, left)):
            self._abort()
            return False
        return True

    def _abort(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, root: Path, max_seconds: float) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.max_seconds = max_seconds
        self.closing = threading.Event()
        self.lock = threading.Lock()
        self.log: list[Seen] = []
        self.scripts: list[tuple[str, Script]] = []

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client hanging up on a misbehaving answer is what these tests do

    def take(self, path: str, range_header: str) -> Script | None:
        """The script for ``path`` (the latest added wins), counting down its ``times``."""
        for i in range(len(self.scripts) - 1, -1, -1):
            suffix, s = self.scripts[i]
            if s.range_prefix is not None and (not range_header.startswith(s.range_prefix) if s.range_prefix
                                               else range_header):
                continue
            if path.split("?", 1)[0].endswith(suffix):
                if s.times is not None:
                    if s.times <= 0:
                        continue
                    s.times -= 1
                return s
        return None


class HostileServer:
    """Serve ``root`` on 127.0.0.1:<free port>, misbehaving as scripted."""

    def __init__(self, root: str | Path, *, max_seconds: float = 15.0) -> None:
        self.server = _Server(Path(root), max_seconds)
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def log(self) -> list[Seen]:
        return self.server.log

    def script(self, suffix: str, script: Script) -> None:
        with self.server.lock:
            self.server.scripts.append((suffix, script))

    def requests_for(self, suffix: str) -> list[Seen]:
        return [r for r in self.log if r.path.endswith(suffix)]

    def __enter__(self) -> HostileServer:
        self.thread.start()
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.server.closing.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


class SlowHandshake:
    """Every connection gets a TLS record header announcing 16 KiB, then one byte every ``every`` seconds."""

    def __init__(self, *, every: float = 0.05, max_seconds: float = 10.0) -> None:
        self.every, self.max_seconds = every, max_seconds
        self.closing = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.connections = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.listener.getsockname()[1]}"

    def _serve(self) -> None:
        while not self.closing.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            self.connections += 1
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        started = time.monotonic()
        with conn, contextlib.suppress(OSError):
            conn.sendall(b"\x16\x03\x03\x40\x00")
            while time.monotonic() - started < self.max_seconds and not self.closing.wait(self.every):
                conn.sendall(b"\x02")

    def __enter__(self) -> SlowHandshake:
        self.thread.start()
        return self

    def __exit__(self, typ: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.closing.set()
        self.thread.join(timeout=5)
        self.listener.close()
