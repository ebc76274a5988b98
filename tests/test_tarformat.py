"""The tar header codec against Python's tarfile and GNU tar: numbers, pax records, long names, checksums."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from objathor_release.build import tarformat as tf
from objathor_release.build.tarball import build_tar
from objathor_release.build.tarscan import scan_tar
from objathor_release.fetch.extract import TarStreamExtractor, expected_members
from tests.support.tarball_helpers import gnu_tar_available, write

needs_gnu_tar = pytest.mark.skipif(not gnu_tar_available(), reason="GNU tar is not installed")


def blocks(data: bytes) -> list[bytes]:
    return [data[i:i + tf.BLOCK] for i in range(0, len(data), tf.BLOCK)]


def read_members(data: bytes) -> list[tuple[str, tf.Header, dict[str, bytes]]]:
    """Walk an archive with the codec alone: (name with long name / pax path applied, header, pax)."""
    out = []
    pos, long_name, pax = 0, None, {}
    while pos + tf.BLOCK <= len(data) and data[pos:pos + tf.BLOCK] != bytes(tf.BLOCK):
        h = tf.decode_header(data[pos:pos + tf.BLOCK], pos)
        payload = data[h.data_offset:h.data_offset + h.size]
        pos = h.data_offset + h.size + (-h.size % tf.BLOCK)
        if h.kind == tf.LONG_NAME:
            long_name = tf.cstring(payload)
        elif h.kind == tf.PAX:
            pax = tf.parse_pax(payload)
        elif h.kind not in tf.EXTENSION_TYPES:
            name = pax.get("path") or long_name or h.name
            out.append((name.decode("utf-8"), h, pax))
            long_name, pax = None, {}
    return out


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("width", [8, 12])
@pytest.mark.parametrize("offset", [-2, -1, 0, 1])
def test_numbers_at_the_octal_and_base256_boundary_match_tarfile(width: int, offset: int) -> None:
    value = 8 ** (width - 1) + offset  # the last octal values, then the first base-256 ones
    field = tf.encode_number(value, width)
    assert len(field) == width
    assert field == tarfile.itn(value, width, tarfile.GNU_FORMAT)  # type: ignore[attr-defined]
    assert field[:1] == (b"\x80" if offset >= 0 else b"7")
    assert tf.decode_number(field, "size") == tarfile.nti(field) == value  # type: ignore[attr-defined]


@pytest.mark.parametrize("value", [0, 1, 0o644, 1700000000, 8**11 - 1, 8**11, 2**40, 256**11 - 1, -1, -2**33,
                                   -(256**11)])
def test_numbers_round_trip(value: int) -> None:
    field = tf.encode_number(value, 12)
    assert tf.decode_number(field, "mtime") == value
    assert field == tarfile.itn(value, 12, tarfile.GNU_FORMAT)  # type: ignore[attr-defined]


def test_numbers_that_do_not_fit_are_refused() -> None:
    for value in (256**11, -(256**11) - 1):
        with pytest.raises(ValueError, match="does not fit a 12-byte tar header field"):
            tf.encode_number(value, 12)


@pytest.mark.parametrize(("field", "value"), [(b"0000644\x00", 0o644), (b"   644 \x00", 0o644), (b"\x00" * 8, 0),
                                              (b"644\x00garbage", 0o644), (b"\xff" * 12, -1)])
def test_number_decoding_accepts_what_tars_write(field: bytes, value: int) -> None:
    assert tf.decode_number(field, "mode") == value


@pytest.mark.parametrize("field", [b"0000089\x00", b"+000644\x00", b"0o644\x00\x00\x00", b"1_000\x00\x00\x00",
                                   b"12abc\x00\x00\x00", b"-1\x00\x00\x00\x00\x00\x00"])
def test_number_decoding_refuses_anything_else(field: bytes) -> None:
    with pytest.raises(tf.HeaderError, match=r"^its size field b'.*' is not an octal number$"):
        tf.decode_number(field, "size")


# --------------------------------------------------------------------------- pax records

AWKWARD_VALUES = ["plain", "a=b=c", "line one\nline two", "naïve 日本語 🙂", "", "x" * 90, "=\n=", "é" * 200]


@pytest.mark.parametrize("value", AWKWARD_VALUES)
def test_pax_records_round_trip_and_match_tarfile(value: str) -> None:
    record = tf.encode_pax_record("comment", value)
    length, _, rest = record.partition(b" ")
    assert int(length) == len(record) and rest.startswith(b"comment=") and record.endswith(b"\n")
    assert tf.parse_pax(record) == {"comment": value.encode("utf-8")}
    info = tarfile.TarInfo("assets/x")
    info.pax_headers = {"comment": value}
    data = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")
    h = tf.decode_header(data[:tf.BLOCK])
    assert h.kind == tf.PAX
    payload = data[tf.BLOCK:tf.BLOCK + h.size]
    assert record in payload  # tarfile writes the very same bytes
    assert tf.parse_pax(payload)["comment"] == value.encode("utf-8")


@pytest.mark.parametrize("body", [1, 5, 6, 7, 95, 96, 97, 98, 995, 996, 997])
def test_pax_record_lengths_across_a_digit(body: int) -> None:
    """The length counts its own digits: 9 -> 10 and 99 -> 100 change the length of the length."""
    record = tf.encode_pax_record("k", "v" * body)
    assert int(record.split(b" ", 1)[0]) == len(record)
    assert tf.parse_pax(record + b"\x00" * 7) == {"k": b"v" * body}


def test_pax_later_records_win_and_several_parse() -> None:
    data = b"".join(tf.encode_pax_record(k, v) for k, v in [("path", "a"), ("size", "12"), ("path", "b")])
    assert tf.parse_pax(data) == {"path": b"b", "size": b"12"}


@pytest.mark.parametrize(("data", "why"), [
    (b"0 path=x\n", "has a wrong length"), (b"99 path=x\n", "has a wrong length"),
    (b"11 path=abc", "has a wrong length"), (b"ab path=x\n", "has no decimal length"),
    (b"path=x\n", "has no decimal length"), (b"12 pathxxxx\n", "is not key=value"),
    (b"7 =abc\n", "is not key=value"), (b"10 \xff\xfe=abc\n", "its PAX key b'\\\\xff\\\\xfe' is not UTF-8"),
])
def test_malformed_pax_records_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(tf.HeaderError, match=why):
        tf.parse_pax(data)


# --------------------------------------------------------------------------- headers


def test_headers_written_by_tarfile_decode_to_the_same_fields() -> None:
    cases = [("assets/u1/a.jpg", tarfile.REGTYPE, 5, 0o644, 1700000000, ""),
             ("assets/u1", tarfile.DIRTYPE, 0, 0o755, 0, ""),
             ("assets/u1/b.jpg", tarfile.LNKTYPE, 0, 0o600, 1, "assets/u1/a.jpg"),
             ("assets/big", tarfile.REGTYPE, 8**11, 0o644, -1, "")]  # base-256 size and mtime
    for name, kind, size, mode, mtime, link in cases:
        info = tarfile.TarInfo(name)
        info.type, info.size, info.mode, info.mtime, info.linkname = kind, size, mode, mtime, link
        data = info.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict")
        h = tf.decode_header(data, 1024)
        shown = name + "/" if kind == tarfile.DIRTYPE else name  # tarfile writes a folder's name with "/"
        assert (h.name, h.kind, h.size, h.mode, h.mtime, h.linkname) == (
            shown.encode(), kind, size, mode, mtime, link.encode())
        assert h.offset == 1024 and h.data_offset == 1536


def test_long_names_over_100_bytes_as_tarfile_and_our_writer_write_them() -> None:
    name = "assets/" + "日本/" * 30 + "x" * 150  # well over 100 bytes, multi-byte UTF-8
    assert len(name.encode()) > 300
    info = tarfile.TarInfo(name)
    info.size = 3
    theirs = info.tobuf(tarfile.GNU_FORMAT, "utf-8", "strict")
    ours = tf.GnuHeaders(0).entry(name.encode(), 0o644, 3, b"0")
    for data in (theirs, ours):
        first = tf.decode_header(data[:tf.BLOCK])
        assert first.name == tf.LONG_LINK_NAME and first.kind == tf.LONG_NAME
        assert first.size == len(name.encode()) + 1
        payload = data[tf.BLOCK:tf.BLOCK + first.size]
        assert tf.cstring(payload) == name.encode()
        last = tf.decode_header(blocks(data)[-1])
        assert last.name == name.encode()[:100] and last.size == 3 and last.kind == b"0"
    # tarfile reads ours back as one member with the full name
    with tarfile.open(fileobj=io.BytesIO(ours + b"abc" + bytes(509) + bytes(1024))) as t:
        assert [(m.name, m.size) for m in t] == [(name, 3)]


def test_the_ustar_prefix_is_joined_only_under_the_posix_magic() -> None:
    info = tarfile.TarInfo("p" * 120 + "/" + "n" * 90)
    data = info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")  # splits into prefix and name
    assert data[345:346] == b"p"
    assert tf.decode_header(data).name == info.name.encode()
    gnu = bytearray(tf.GnuHeaders(0).header(b"short", 0o644, 0, b"0"))
    gnu[345:350] = b"other"
    assert tf.decode_header(tf.with_checksum(bytes(gnu))).name == b"short"


def test_checksum_mismatch_is_refused_and_old_signed_sums_accepted() -> None:
    good = tf.GnuHeaders(1700000000).header(b"assets/a", 0o644, 5, b"0")
    assert tf.checksum_ok(good) and tf.with_checksum(good) == good
    for at in (0, 100, 124, 148, 156, 300, 511):
        bad = bytearray(good)
        bad[at] ^= 0x01
        assert not tf.checksum_ok(bytes(bad))
        with pytest.raises(tf.ChecksumMismatch, match="bad checksum"):
            tf.decode_header(bytes(bad))
    high = bytearray(tf.GnuHeaders(0).header("café".encode("latin-1"), 0o644, 0, b"0"))
    signed = sum(b - 256 if b > 127 else b for b in high[:148] + high[156:]) + 8 * 32
    high[148:156] = b"%06o\x00 " % signed
    assert tf.checksum_ok(bytes(high))  # what some old tars wrote
    with pytest.raises(tf.ChecksumMismatch):
        tf.decode_header(bytes(512 - 8) + b"notatar!")


def test_a_bad_number_with_a_good_checksum_names_the_field() -> None:
    block = bytearray(tf.GnuHeaders(0).header(b"assets/a", 0o644, 5, b"0"))
    block[136:148] = b"yesterday\x00\x00\x00"
    with pytest.raises(tf.HeaderError, match=r"^its mtime field b'yesterday' is not an octal number$"):
        tf.decode_header(tf.with_checksum(bytes(block)))


def test_end_of_archive_fills_the_record() -> None:
    for offset in (512, 1024, 9216, 9728, 10240):
        n = tf.end_of_archive(offset)
        assert n >= 1024 and (offset + n) % tf.RECORD == 0
    assert 9728 + tf.end_of_archive(9728) == 2 * tf.RECORD  # data ending in a record's last block: one more


# --------------------------------------------------------------------------- GNU tar's own output


def _awkward_tree(root: Path) -> list[str]:
    names = ["u1/a.bin", "u1/" + "long-" * 30 + "name.bin", "日本語/naïve 🙂 =x.bin", "u2/a=b=c" + "-" * 100 + ".bin",
             "u2/line\nbreak" + "_" * 100 + ".bin", "u3/a=b.bin", "deep/" + "é" * 60 + "/" + "ü" * 60 + ".bin"]
    for i, name in enumerate(names):
        write(root / name, os.urandom(i * 300))
    return sorted(names)


@needs_gnu_tar
@pytest.mark.parametrize("fmt", ["gnu", "posix", "ustar"])
def test_gnu_tar_archives_decode_like_tarfile_reads_them(fmt: str, tmp_path: Path) -> None:
    src = tmp_path / "assets"
    names = _awkward_tree(src)
    if fmt == "ustar":  # ustar has no way to hold these names; keep the ones a prefix split can take
        names = [n for n in names if "\n" not in n and len(n.rsplit("/", 1)[-1].encode()) <= 100]
    out = tmp_path / f"{fmt}.tar"
    subprocess.run(["tar", f"--format={fmt}", "--mtime=@1700000000", "-C", str(tmp_path), "-cf", str(out),
                    *(f"assets/{n}" for n in names)], check=True, capture_output=True)
    data = out.read_bytes()
    ours = read_members(data)
    with tarfile.open(out) as t:
        theirs = [(m.name + ("/" if m.isdir() else ""), m.size, m.mode, m.mtime, m.offset_data) for m in t]
    assert [(n, h.size if h.kind != tf.DIRECTORY else 0, h.mode, h.mtime, h.data_offset)
            for n, h, _ in ours] == [(n, s, m, int(t), o) for n, s, m, t, o in theirs]
    files = sorted(n for n, h, _ in ours if h.kind in tf.REGULAR_TYPES)
    assert files == [f"assets/{n}" for n in names]
    for n, h, _ in ours:
        if h.kind in tf.REGULAR_TYPES:
            assert data[h.data_offset:h.data_offset + h.size] == (tmp_path / n).read_bytes()
    if fmt == "posix":
        records = [pax for _, _, pax in ours if "path" in pax]
        assert any(b"\n" in pax["path"] for pax in records) and any(b"=" in pax["path"] for pax in records)
    if fmt == "gnu":
        kinds = [tf.decode_header(data[i:i + tf.BLOCK]).kind for i in range(0, len(data), tf.BLOCK)
                 if data[i:i + 13] == tf.LONG_LINK_NAME]
        assert tf.LONG_NAME in kinds


@needs_gnu_tar
@pytest.mark.parametrize("fmt", ["gnu", "posix"])
def test_writer_scanner_and_extractor_agree_through_the_codec(fmt: str, tmp_path: Path) -> None:
    """GNU tar's archive and ours: the scanner's figures are what the extractor checks every member against."""
    src = tmp_path / "assets"
    names = _awkward_tree(src)
    gnu = tmp_path / f"{fmt}.tar"
    subprocess.run(["tar", f"--format={fmt}", "-C", str(tmp_path), "-cf", str(gnu), "assets"], check=True,
                   capture_output=True)
    ours = build_tar(src, tmp_path / "ours.tar", show_progress=False)
    for archive, written in ((gnu, None), (ours.path, ours.members)):
        scan = scan_tar(archive)
        assert sorted(m["path"] for m in scan.members) == [f"assets/{n}" for n in names]
        if written is not None:
            assert scan.members == written
        dest = tmp_path / f"out-{archive.stem}"
        dest.mkdir()
        ex = TarStreamExtractor(dest, expect=expected_members(scan.members), source=archive.name)
        data = archive.read_bytes()
        for i in range(0, len(data), 777):  # pieces that split headers and pax records
            ex.feed(data[i:i + 777])
        ex.finish()
        for n in names:
            assert (dest / "assets" / n).read_bytes() == (src / n).read_bytes()
