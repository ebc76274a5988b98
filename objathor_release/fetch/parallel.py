"""One file as an in-order stream of bytes, fetched by several Range requests at once.

The cut: :func:`parallel_stream` turns a URL into the same iterator of byte
blocks as :meth:`.http.Http.stream`, so the streaming extractor and the
hashing reader need not know how the bytes came. The file is cut into pieces
of ``piece`` bytes; worker threads fetch pieces by Range (each piece through
``Http.stream``, which retries and resumes a cut piece at its next byte, with
If-Range so a file that changes mid-way is an error, never a mix); the pieces
are handed on strictly in order.

Memory is bounded: a piece is only started when it lies within ``window``
pieces of the next one to hand on, so at most ``window * piece`` bytes are
buffered (256 MiB by default). The number of pieces fetched at once adapts:
it starts at a few and doubles while the total rate keeps growing by a tenth
or more, up to ``connections``, and a 429 or 503 halves it and stops the growth
(the rule of :mod:`objathor_release.ramp`, which the upload shares);
``adaptive=False`` uses ``connections`` from the start. A server that does not
serve ranges, a file of unknown size or one smaller than two pieces gets the
plain single stream, and so does the rest of a file whose server stops serving
ranges mid-way (a piece answered by HTTP 200).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

from objathor_release.fetch.http import Http, Info, RangesIgnored
from objathor_release.fetch.transport import RetryableStatus
from objathor_release.ramp import Ramp

log = logging.getLogger(__name__)

MiB = 1024 * 1024
PIECE = 8 * MiB
BUFFER = 256 * MiB
START = 4  # pieces in flight at first, when adapting
THROTTLE_STATUS = (429, 503)  # answers that halve the connections
JOIN = 5.0  # seconds a closed stream waits, in all, for its workers (each stops at its next read)


def parallel_stream(http: Http, url: str, *, on_open: Callable[[Info], None] | None = None,
                    stop: threading.Event | None = None, connections: int | None = None,
                    adaptive: bool = True, piece: int = PIECE, buffer: int = BUFFER,
                    size_hint: int | None = None, start: int = 0) -> Iterator[bytes | bytearray]:
    """Yield the bytes of ``url`` in order, fetched by up to ``connections`` Range requests at once.

    ``on_open`` sees the file's Info once, before any byte is handed on. Errors
    of a piece (after ``Http.stream``'s own retries) are raised here, in the
    consumer's thread; closing the iterator stops every worker. ``size_hint``
    (the manifest's size) lets a small file skip the probe request; ``start``
    begins at that byte (a resumed extraction).
    """
    cap = connections or http.config.connections
    window = max(2, min(buffer // piece, 4 * cap))
    known = size_hint if start else None  # a resumed stream checks the total it continues
    if cap <= 1 or (size_hint is not None and size_hint - start < 2 * piece):
        yield from http.stream(url, start=start, on_open=on_open, stop=stop, size=known)
        return
    info = http.info(url)
    if not info.ranges or info.size is None or info.size - start < 2 * piece or not info.validator:
        yield from http.stream(url, start=start, on_open=on_open, stop=stop, size=known)
        return
    if on_open is not None:
        on_open(info)
    ramp = Ramp(START, cap, adaptive, what="download")
    yield from _Pieces(http, url, info, piece, window, ramp, stop, start).run()


class _Pieces:
    """The workers and the in-order hand-over of one parallel stream."""

    def __init__(self, http: Http, url: str, info: Info, piece: int, window: int, ramp: Ramp,
                 stop: threading.Event | None, start: int = 0) -> None:
        assert info.size is not None
        self.http, self.url, self.size, self.validator = http, url, info.size, info.validator
        self.piece, self.window, self.ramp, self.start = piece, window, ramp, start
        self.count = -(-(self.size - start) // piece)
        self.cond = threading.Condition()
        self.ready: dict[int, bytearray] = {}
        self.next_out = 0  # the piece the consumer waits for
        self.next_in = 0  # the next piece a worker takes
        self.running = 0
        self.error: BaseException | None = None
        self.stop = threading.Event()
        self.outer_stop = stop

    def _stopped(self) -> bool:
        return self.stop.is_set() or (self.outer_stop is not None and self.outer_stop.is_set())

    def _take(self) -> int | None:
        """The next piece to fetch, waiting while the window or the connection limit is full."""
        with self.cond:
            while True:
                if self._stopped() or self.error is not None or self.next_in >= self.count:
                    return None
                if self.next_in < self.next_out + self.window and self.running < self.ramp.limit:
                    index = self.next_in
                    self.next_in += 1
                    self.running += 1
                    return index
                self.cond.wait(0.5)

    def _throttled(self, exc: BaseException) -> None:
        """A 429 or 503 means the server wants fewer requests: halve the connections, stop growing."""
        if isinstance(exc, RetryableStatus) and exc.status in THROTTLE_STATUS:
            with self.cond:
                self.ramp.throttled()

    def _worker(self) -> None:
        while (index := self._take()) is not None:
            start = self.start + index * self.piece
            end = min(self.size, start + self.piece) - 1
            try:
                data = bytearray(end + 1 - start)  # filled in place: no second copy of the piece
                got = 0
                for block in self.http.stream(self.url, start=start, end=end, validator=self.validator,
                                              size=self.size, stop=self.stop, ranged=True,
                                              on_retry=self._throttled):
                    data[got:got + len(block)] = block
                    got += len(block)
                if got != len(data) and not self._stopped():
                    raise ConnectionError(f"piece {index} ended after {got} bytes")
            except BaseException as exc:  # handed to the consumer, which raises it
                with self.cond:
                    self.error = self.error or exc
                    self.running -= 1
                    self.cond.notify_all()
                return
            with self.cond:
                self.running -= 1
                if got != len(data):  # stopped part-way: nobody will take it
                    self.cond.notify_all()
                    return
                self.ready[index] = data
                self.ramp.done(len(data))
                self.cond.notify_all()

    def run(self) -> Iterator[bytes | bytearray]:
        self.ramp.begin()
        threads = [threading.Thread(target=self._worker, name=f"download-piece-{i}", daemon=True)
                   for i in range(self.ramp.cap)]
        for t in threads:
            t.start()
        try:
            while self.next_out < self.count:
                with self.cond:
                    while self.next_out not in self.ready and self.error is None:
                        if self.outer_stop is not None and self.outer_stop.is_set():
                            return
                        self.cond.wait(0.5)
                    if self.next_out not in self.ready:  # an error, after the pieces before it
                        if isinstance(self.error, RangesIgnored):
                            break
                        assert self.error is not None
                        raise self.error
                    data = self.ready.pop(self.next_out)
                    self.next_out += 1
                    self.cond.notify_all()
                yield data
            else:
                return
            yield from self._rest_as_one_stream()
        finally:
            self._close(threads)

    def _rest_as_one_stream(self) -> Iterator[bytes]:
        """The server stopped serving ranges mid-way: stop the workers and read the rest in one stream
        (its start read and dropped once), instead of every piece reading the file up to itself."""
        log.info("%s: the server answered a byte range with the whole file: reading the rest in one "
                 "stream", self.url)
        self.stop.set()
        with self.cond:
            self.ready.clear()
            self.cond.notify_all()
        yield from self.http.stream(self.url, start=self.start + self.next_out * self.piece,
                                    validator=self.validator, size=self.size, stop=self.outer_stop)

    def _close(self, threads: list[threading.Thread]) -> None:
        """Stop every worker; wait for them ``JOIN`` seconds in all (one stuck in a read ends at its
        read timeout and then does nothing more: it only ever hands bytes to this object)."""
        self.stop.set()
        with self.cond:
            self.ready.clear()
            self.cond.notify_all()
        deadline = time.monotonic() + JOIN
        for t in threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))
