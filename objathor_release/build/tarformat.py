"""The tar header codec: numeric fields, checksums, pax records, GNU long names, header blocks.

One module knows the byte layout of a 512-byte tar header; the writer
(:mod:`.tarwriter`), the scanner (:mod:`.tarscan`) and the download's
extractor (:mod:`objathor_release.fetch.extract`) all go through it:

- numbers: octal text ended by a NUL, or GNU base-256 (first byte 0x80, or
  0xff for a negative number) when the value does not fit the octal digits;
- the checksum: the sum of the header's bytes with its own field read as
  spaces (the signed sum old tars wrote is accepted too);
- pax records ``"<len> key=value\\n"``, where ``len`` counts the whole record;
- GNU long names: a ``././@LongLink`` member of type ``L`` (``K`` for a link
  target) holding the NUL-ended name, before the member it names;
- :func:`decode_header` turns a block into a :class:`Header`;
  :class:`GnuHeaders` builds the blocks ``tar --format=gnu`` writes.

Decoding is strict and says what is wrong in one line (:class:`HeaderError`);
which values are acceptable (a size limit, an mtime range) is the caller's
policy, not the codec's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

BLOCK = 512
RECORD = 20 * BLOCK  # GNU tar's default blocking factor
MAX_OCTAL_11 = 8**11  # first value that no longer fits 11 octal digits (a size or mtime field)

# member types
REGULAR_TYPES = (b"0", b"\x00", b"7")
HARDLINK = b"1"
SYMLINK = b"2"
DIRECTORY = b"5"
SPARSE = b"S"
LONG_NAME = b"L"  # GNU: the next member's name
LONG_LINK = b"K"  # GNU: the next member's link target
PAX = b"x"  # pax extended header for the next member
GLOBAL_PAX = b"g"
EXTENSION_TYPES = (LONG_NAME, LONG_LINK, PAX, GLOBAL_PAX)

GNU_MAGIC = b"ustar  \x00"  # magic and version as GNU tar writes them
USTAR_MAGIC = b"ustar\x00"  # POSIX magic (version "00" follows)
LONG_LINK_NAME = b"././@LongLink"

_OCTAL = re.compile(rb"[0-7]*")
_CHECKSUM = slice(148, 156)


class HeaderError(ValueError):
    """A header field that cannot be decoded; ``str()`` is one line saying which and why."""


class ChecksumMismatch(HeaderError):
    """The header's checksum does not match its bytes: corrupt, or not a tar at all."""


# --------------------------------------------------------------------------- numbers


def encode_number(value: int, width: int) -> bytes:
    """A numeric field of ``width`` bytes as GNU tar writes it: octal and a NUL, else base-256.

    ValueError when even base-256 cannot hold ``value``.
    """
    if 0 <= value < 8 ** (width - 1):
        return b"%0*o\x00" % (width - 1, value)
    limit = 256 ** (width - 1)
    if not -limit <= value < limit:
        raise ValueError(f"value {value} does not fit a {width}-byte tar header field")
    if value >= 0:
        return b"\x80" + value.to_bytes(width - 1, "big")
    return b"\xff" + (limit + value).to_bytes(width - 1, "big")


def decode_number(field: bytes, what: str) -> int:
    """A numeric field: octal text (leading spaces, ended by NUL or space), or GNU base-256."""
    if field[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field[1:], "big")
        if field[0] == 0xFF:
            value -= 1 << (8 * (len(field) - 1))
        return value
    text = field.split(b"\x00", 1)[0].strip(b" ")
    if not _OCTAL.fullmatch(text):
        shown = field.rstrip(b"\x00")
        raise HeaderError(f"its {what} field {shown!r} is not an octal number")
    return int(text, 8) if text else 0


# --------------------------------------------------------------------------- checksum


def checksum(block: bytes) -> int:
    """The checksum a writer stores: the unsigned sum of the block, its checksum field counted as spaces."""
    return sum(block[:148]) + 8 * 32 + sum(block[156:BLOCK])


def checksum_ok(block: bytes) -> bool:
    """Whether the stored checksum matches (unsigned, or the signed sum some old tars wrote)."""
    try:
        stored = decode_number(block[_CHECKSUM], "checksum")
    except HeaderError:
        return False
    if stored == checksum(block):
        return True
    signed = sum(b - 256 if b > 127 else b for b in block[:148] + block[156:BLOCK]) + 8 * 32
    return stored == signed


def with_checksum(block: bytes) -> bytes:
    """``block`` with its checksum field filled in as GNU tar writes it (six digits, NUL, space)."""
    return block[:148] + b"%06o\x00 " % checksum(block) + block[156:]


# --------------------------------------------------------------------------- pax records


def encode_pax_record(key: str, value: str | bytes) -> bytes:
    """One ``"<len> key=value\\n"`` record; ``len`` counts its own digits too."""
    body = b" " + key.encode("utf-8") + b"=" + (value.encode("utf-8") if isinstance(value, str) else value) \
        + b"\n"
    length = len(body) + 1
    while len(b"%d" % length) + len(body) != length:
        length += 1
    return b"%d" % length + body


def parse_pax(data: bytes) -> dict[str, bytes]:
    """A pax extended header's records as ``{key: raw value}``; HeaderError if one is malformed.

    A later record for the same key wins.

    Parsing stops at a NUL where a record would start (the header's padding).
    """
    out: dict[str, bytes] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos, pos + 21)
        if space <= pos or not data[pos:space].isdigit():
            raise HeaderError(f"a PAX record at {pos} has no decimal length")
        end = pos + int(data[pos:space])
        if end < space + 3 or end > len(data) or data[end - 1] != 0x0A:
            raise HeaderError(f"a PAX record at {pos} has a wrong length")
        key, eq, value = data[space + 1:end - 1].partition(b"=")
        if not eq or not key:
            raise HeaderError(f"a PAX record at {pos} is not key=value")
        try:
            out[key.decode("utf-8")] = value
        except UnicodeDecodeError:
            raise HeaderError(f"its PAX key {key[:200]!r} is not UTF-8") from None
        pos = end
    return out


# --------------------------------------------------------------------------- decoding a header


def cstring(field: bytes) -> bytes:
    """A text field's bytes up to its first NUL."""
    return field.split(b"\x00", 1)[0]


@dataclass(frozen=True)
class Header:
    """One decoded header block. Names are bytes: which encoding to expect is the reader's call."""

    name: bytes  # up to the NUL; a POSIX ustar prefix already joined with "/"
    mode: int
    size: int  # as the size field says (a pax record may override it)
    mtime: int
    kind: bytes  # the one-byte type flag
    linkname: bytes
    offset: int  # where the header block starts in the archive

    @property
    def data_offset(self) -> int:
        """Where the member's data (or the extension's payload) starts."""
        return self.offset + BLOCK


def decode_header(block: bytes, offset: int = 0) -> Header:
    """Decode a 512-byte header block that starts at byte ``offset`` of the archive.

    ChecksumMismatch when the checksum is wrong, HeaderError when a numeric
    field is not a number; negative and huge values are returned as they are.
    """
    if len(block) != BLOCK:
        raise HeaderError(f"a header of {len(block)} bytes, not {BLOCK}")
    if not checksum_ok(block):
        raise ChecksumMismatch("bad checksum")
    name = cstring(block[0:100])
    if block[257:263] == USTAR_MAGIC and block[345]:  # POSIX ustar: the name's leading folders
        name = cstring(block[345:500]) + b"/" + name
    return Header(
        name=name,
        mode=decode_number(block[100:108], "mode"),
        size=decode_number(block[124:136], "size"),
        mtime=decode_number(block[136:148], "mtime"),
        kind=block[156:157],
        linkname=cstring(block[157:257]),
        offset=offset,
    )


# --------------------------------------------------------------------------- building GNU headers

_UID_GID = b"0000000\x00" * 2
_AFTER_TYPE = bytes(100) + GNU_MAGIC + bytes(32 + 32 + 8 + 8 + 167)  # linkname .. end of block
_CHK_BLANK = b" " * 8
_NUL100 = bytes(100)


def normalize_mode(mode: int, is_dir: bool) -> int:
    """The permission bits GNU tar stores with ``--mode=go=rX,u+rw,a-s``.

    Group and other get read, plus execute for a directory or when anyone could
    execute; the owner keeps its bits and gains read and write; set-user-ID,
    set-group-ID and sticky bits are dropped.
    """
    x = is_dir or bool(mode & 0o111)
    return (mode & 0o700) | 0o600 | (0o055 if x else 0o044)


class GnuHeaders:
    """Builds the headers ``tar --format=gnu --owner=0 --group=0 --numeric-owner --mtime=@EPOCH`` writes.

    Every header shares the uid, gid, mtime and the empty fields after the type,
    so their checksum is summed once; a member adds its name, mode, size and type.
    """

    def __init__(self, mtime: int) -> None:
        self.mtime_field = encode_number(mtime, 12)
        self._const = sum(_UID_GID) + sum(self.mtime_field) + sum(_CHK_BLANK) + sum(_AFTER_TYPE)
        self._modes: dict[int, tuple[bytes, int]] = {}
        self._files: dict[int, tuple[bytes, int]] = {}  # raw st_mode -> normalized mode field, its sum

    def _mode(self, mode: int) -> tuple[bytes, int]:
        got = self._modes.get(mode)
        if got is None:
            f = encode_number(mode, 8)
            got = self._modes[mode] = (f, sum(f))
        return got

    def file(self, name: bytes, st_mode: int, size: int) -> bytes:
        """A regular file's header block(s), with a fast path for the usual short name."""
        got = self._files.get(st_mode)
        if got is None:
            got = self._files[st_mode] = self._mode(normalize_mode(st_mode, False))
        if len(name) > 100 or size >= MAX_OCTAL_11:
            return self.entry(name, normalize_mode(st_mode, False), size, b"0")
        size_field = b"%011o\x00" % size
        chk = self._const + sum(name) + got[1] + sum(size_field) + 48  # 48: typeflag b"0"
        return b"".join((name, _NUL100[len(name):], got[0], _UID_GID, size_field, self.mtime_field,
                         b"%06o\x00 " % chk, b"0", _AFTER_TYPE))

    def header(self, name: bytes, mode: int, size: int, typeflag: bytes, mtime: bytes | None = None) -> bytes:
        """One 512-byte header (``name`` already fits 100 bytes)."""
        mode_field, mode_sum = self._mode(mode)
        size_field = encode_number(size, 12)
        mtime_field = self.mtime_field if mtime is None else mtime
        chk = self._const + sum(name) + mode_sum + sum(size_field) + typeflag[0]
        if mtime is not None:
            chk += sum(mtime) - sum(self.mtime_field)
        return b"".join((
            name, bytes(100 - len(name)), mode_field, _UID_GID, size_field, mtime_field,
            b"%06o\x00 " % chk, typeflag, _AFTER_TYPE,
        ))

    def entry(self, name: bytes, mode: int, size: int, typeflag: bytes) -> bytes:
        """The header block(s) of one member: a GNU ``././@LongLink`` first when the name is long."""
        if len(name) <= 100:
            return self.header(name, mode, size, typeflag)
        data = name + b"\x00"
        pad = -len(data) % BLOCK
        long = self.header(LONG_LINK_NAME, 0o644, len(data), LONG_NAME, mtime=encode_number(0, 12))
        return long + data + bytes(pad) + self.header(name[:100], mode, size, typeflag)


def end_of_archive(offset: int) -> int:
    """How many zero bytes GNU tar writes after data ending at ``offset``: two zero blocks, then
    zeros up to a whole 10240-byte record (more than one record when the data ends in a record's
    last block)."""
    return 2 * BLOCK + (-(offset + 2 * BLOCK) % RECORD)
