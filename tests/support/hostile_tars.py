"""Forge tar byte streams, well-formed or not, for the extractor's hostile-input tests.

    data = tar(symlink("assets/l", ".."))  # the good start (assets/, assets/u1/, a file), then a link
    data = tar(file("assets/u1/b", size=b"12abc"), close=False)  # a size that is not octal, no end blocks

Every header is a ustar header with a correct checksum unless ``checksum`` is
given, and any field can be replaced by raw bytes, so a test can put exactly
the garbage it wants where it wants. ``feed_in_chunks`` feeds a stream in random
piece sizes, since the extractor is an incremental parser.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from objathor_release.fetch.extract import TarStreamExtractor

BLOCK = 512


def _field(value: bytes | int, width: int) -> bytes:
    """An octal field (``width - 1`` digits and a NUL) for an int, or raw bytes padded with NULs."""
    raw = value if isinstance(value, bytes) else b"%0*o\0" % (width - 1, value)
    assert len(raw) <= width, (raw, width)
    return raw.ljust(width, b"\0")


def base256(value: int, width: int = 12) -> bytes:
    """GNU base-256 (the high bit of the first byte set; 0xff first for a negative number)."""
    if value < 0:
        return (value % (1 << (8 * width))).to_bytes(width, "big")
    return b"\x80" + value.to_bytes(width - 1, "big")


def raw_header(name: bytes | str, *, kind: bytes = b"0", size: bytes | int = 0, mode: bytes | int = 0o644,
               mtime: bytes | int = 1_700_000_000, link: bytes | str = b"", checksum: bytes | None = None,
               prefix: bytes = b"") -> bytes:
    """One 512-byte ustar header; ints are written as octal, bytes as given."""
    name_b = name.encode() if isinstance(name, str) else name
    link_b = link.encode() if isinstance(link, str) else link
    head = b"".join([
        _field(name_b, 100), _field(mode, 8), _field(0, 8), _field(0, 8), _field(size, 12),
        _field(mtime, 12), b" " * 8, kind, _field(link_b, 100), b"ustar\x0000", _field(b"root", 32),
        _field(b"root", 32), _field(0, 8), _field(0, 8), _field(prefix, 155), bytes(12),
    ])
    assert len(head) == BLOCK
    if checksum is None:
        checksum = b"%06o\0 " % sum(head)
    return head[:148] + _field(checksum, 8) + head[156:]


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % BLOCK)


def member(name: bytes | str, data: bytes = b"", **fields: object) -> bytes:
    """A header and its padded data; ``size`` defaults to ``len(data)``."""
    fields.setdefault("size", len(data))
    return raw_header(name, **fields) + padded(data)  # type: ignore[arg-type]


def file(name: bytes | str, data: bytes = b"x", **fields: object) -> bytes:
    return member(name, data, **fields)


def directory(name: bytes | str) -> bytes:
    return member(name, kind=b"5", mode=0o755)


def symlink(name: bytes | str, target: bytes | str) -> bytes:
    return member(name, kind=b"2", link=target)


def hardlink(name: bytes | str, target: bytes | str) -> bytes:
    return member(name, kind=b"1", link=target)


def pax_record(key: str, value: bytes | str) -> bytes:
    """One well-formed ``"<len> key=value\\n"`` record."""
    body = b" " + key.encode() + b"=" + (value.encode() if isinstance(value, str) else value) + b"\n"
    length = len(body) + 1
    while len(str(length).encode() + body) != length:
        length += 1
    return str(length).encode() + body


def pax(records: bytes | dict[str, bytes | str]) -> bytes:
    """A PAX extended header ('x') carrying ``records`` (a dict, or raw record bytes as given)."""
    data = records if isinstance(records, bytes) else b"".join(pax_record(k, v) for k, v in records.items())
    return member("././@PaxHeader", data, kind=b"x")


def gnu_long_name(name: bytes) -> bytes:
    """A GNU long-name entry ('L') for the next member."""
    return member("././@LongLink", name + b"\0", kind=b"L")


def end() -> bytes:
    return bytes(2 * BLOCK)


GOOD_START = (directory("assets"), directory("assets/u1"), file("assets/u1/a.jpg", b"jpeg"))


def tar(*members: bytes, start: Iterable[bytes] = GOOD_START, close: bool = True) -> bytes:
    """The good start (a top folder, an asset folder, a file), then ``members``, then the end blocks."""
    return b"".join([*start, *members, end() if close else b""])


def feed_in_chunks(extractor: TarStreamExtractor, data: bytes, rng: random.Random | None,
                   largest: int = 2000) -> None:
    """Feed ``data`` whole (rng None) or in random pieces of 1..largest bytes."""
    if rng is None:
        extractor.feed(data)
        return
    i = 0
    while i < len(data):
        step = rng.randint(1, largest)
        extractor.feed(data[i:i + step])
        i += step
