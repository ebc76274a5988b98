"""A long-link emulator: a TCP proxy that adds latency, a per-connection setup cost and a rate cap.

Loopback hides what users meet on the way to R2: every request costs a round trip, every new
connection costs a few more (TCP and TLS handshakes), and one connection carries only so much
(window, per-connection limits). This proxy puts those three back between a client and a local
server, so a benchmark or a test can see what parallel connections buy:

    python -m devtools.wanproxy --upstream 127.0.0.1:8080 --rtt-ms 80 --handshake-rtts 2 --cap 6M

prints ``listening on 127.0.0.1:PORT`` and forwards until interrupted. From Python::

    with WanProxy(("127.0.0.1", 8080), rtt=0.08, handshake_rtts=2, cap=6e6) as proxy:
        url = f"http://127.0.0.1:{proxy.port}/..."

The model, per connection: accepting it waits ``handshake_rtts * rtt`` before the upstream
connection opens; every chunk, in either direction, is delivered ``rtt / 2`` after it arrived
(so a request and its answer cost one round trip, while a stream keeps flowing: delay does not
cap throughput by itself), and each direction is held to ``cap`` bytes per second by a token
bucket. Connections are independent, so N connections carry N times the cap, as on a real link
until its shared capacity is reached (``--total-cap`` models that too).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from types import TracebackType

CHUNK = 64 * 1024


class _Bucket:
    """A token bucket: ``take(n)`` waits until n bytes may pass at ``rate`` bytes per second."""

    def __init__(self, rate: float | None, burst: float | None = None) -> None:
        self.rate = rate
        self.burst = burst if burst is not None else (rate or 0) / 20  # 50 ms of traffic
        self.tokens = self.burst
        self.stamp = time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        if not self.rate:
            return
        async with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= n
            if self.tokens < 0:
                await asyncio.sleep(-self.tokens / self.rate)


class _Link:
    def __init__(self, upstream: tuple[str, int], rtt: float, handshake_rtts: float,
                 cap: float | None, total_cap: float | None) -> None:
        self.upstream = upstream
        self.rtt = rtt
        self.handshake_rtts = handshake_rtts
        self.cap = cap
        self.shared = {"up": _Bucket(total_cap), "down": _Bucket(total_cap)}
        self.connections = 0
        self.bytes_down = 0
        self.tasks: set[asyncio.Task[None]] = set()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, way: str) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=64)
        own = _Bucket(self.cap)

        async def receive() -> None:
            try:
                while data := await reader.read(CHUNK):
                    await queue.put((time.monotonic() + self.rtt / 2, data))
            except (ConnectionError, OSError):
                pass
            await queue.put((time.monotonic() + self.rtt / 2, b""))

        async def deliver() -> None:
            broken = False
            while True:
                due, data = await queue.get()
                if not data:
                    if not broken:
                        wait = due - time.monotonic()
                        if wait > 0:
                            await asyncio.sleep(wait)
                        with contextlib.suppress(OSError, RuntimeError):
                            if writer.can_write_eof():
                                writer.write_eof()
                    return
                if broken:  # the far side is gone: drop the rest, so receive() never blocks on a full queue
                    continue
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                await own.take(len(data))
                await self.shared[way].take(len(data))
                if way == "down":
                    self.bytes_down += len(data)
                try:
                    writer.write(data)
                    await writer.drain()
                except (ConnectionError, OSError, RuntimeError):
                    broken = True

        await asyncio.gather(receive(), deliver())

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        # The work runs in a task of its own, so shutdown() can cancel it while this callback (which
        # asyncio's start_server watches, and on Python 3.11 logs if it is cancelled) returns normally.
        work = asyncio.ensure_future(self._serve(client_r, client_w))
        self.tasks.add(work)
        try:
            await work
        except asyncio.CancelledError:
            if not work.cancelled():  # this callback itself was cancelled: pass it on
                raise
        finally:
            self.tasks.discard(work)
            client_w.close()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(self.handshake_rtts * self.rtt)
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            return
        try:
            await asyncio.gather(self._pipe(client_r, server_w, "up"),
                                 self._pipe(server_r, client_w, "down"))
        finally:
            server_w.close()

    async def shutdown(self) -> None:
        """End every open connection (their tasks are cancelled and awaited)."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class WanProxy:
    """The proxy on its own event loop in a background thread; ``port`` is where it listens."""

    def __init__(self, upstream: tuple[str, int], *, rtt: float = 0.08, handshake_rtts: float = 2,
                 cap: float | None = 6e6, total_cap: float | None = None, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.link = _Link(upstream, rtt, handshake_rtts, cap, total_cap)
        self.host = host
        self.port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="wanproxy", daemon=True)
        self._server: asyncio.base_events.Server | None = None

    @property
    def connections(self) -> int:
        """How many client connections the proxy has accepted."""
        return self.link.connections

    @property
    def bytes_down(self) -> int:
        """Bytes delivered from the server to clients."""
        return self.link.bytes_down

    def start(self) -> WanProxy:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self.link.handle, self.host, self.port), self._loop)
        self._server = future.result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        """Stop listening, end the open connections and the loop's thread."""
        if not self._thread.is_alive():
            return
        if self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self.link.shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> WanProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


def parse_rate(text: str) -> float | None:
    """``6M`` -> 6e6 bytes per second; ``0`` or ``none`` -> no cap."""
    text = text.strip().upper()
    if text in ("0", "NONE", ""):
        return None
    scale = {"K": 1e3, "M": 1e6, "G": 1e9}.get(text[-1], 1)
    return float(text[:-1] if scale != 1 else text) * scale


@contextlib.contextmanager
def running(upstream: tuple[str, int], **settings: float | None) -> Iterator[WanProxy]:
    """``with running(("127.0.0.1", port), rtt=0.08) as proxy:`` -- the same as ``WanProxy``."""
    with WanProxy(upstream, **settings) as proxy:  # type: ignore[arg-type]
        yield proxy


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devtools.wanproxy", description=__doc__.splitlines()[0])
    p.add_argument("--upstream", required=True, help="HOST:PORT of the real server")
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT to listen on (port 0: any)")
    p.add_argument("--rtt-ms", type=float, default=80, help="round-trip time added (default 80 ms)")
    p.add_argument("--handshake-rtts", type=float, default=2,
                   help="round trips a new connection costs before data flows (default 2: TCP + TLS)")
    p.add_argument("--cap", default="6M", help="bytes per second per connection and direction (default 6M)")
    p.add_argument("--total-cap", default="0",
                   help="bytes per second shared by all connections (default none)")
    args = p.parse_args(argv)
    up_host, _, up_port = args.upstream.rpartition(":")
    host, _, port = args.listen.rpartition(":")
    proxy = WanProxy((up_host, int(up_port)), rtt=args.rtt_ms / 1000, handshake_rtts=args.handshake_rtts,
                     cap=parse_rate(args.cap), total_cap=parse_rate(args.total_cap), host=host,
                     port=int(port))
    with proxy:
        print(f"listening on {proxy.host}:{proxy.port}", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
