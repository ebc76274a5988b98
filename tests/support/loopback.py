"""A threaded HTTP server on a free 127.0.0.1 port, for the tests' own proxies and servers.

    class MyProxy(LoopbackServer):
        def __init__(self, ...):
            super().__init__(handler_class)

    with MyProxy(...) as proxy:
        client(endpoint_url=proxy.url)
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TypeVar

_S = TypeVar("_S", bound="LoopbackServer")


class LoopbackServer:
    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self: _S) -> _S:
        self.thread.start()
        return self

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.server.shutdown()
        self.server.server_close()
