"""Property test of the safe extractor: any byte stream, fed in any pieces, is extracted safely or refused.

Streams are arbitrary bytes, or small valid tars (GNU, PAX and ustar, built
with :mod:`tarfile`) with bytes flipped, inserted, deleted or cut off, header
fields overwritten with random bytes (the checksum then fixed, or not) and
header blocks spliced in from elsewhere. Each is fed in random piece sizes.
The property: either ``finish()`` succeeds and the destination holds only the
one top-level folder, with no symlink anywhere below it and no file sharing an
inode with one outside; or a ReleaseError with a one-line message is raised.
Either way the sentinel folder around the destination is unchanged and no
descriptor is left open.

The run is deterministic (derandomized, no example database) and bounded for
CI at 300 examples. To fuzz longer, raise the count:

    OBJATHOR_FUZZ_EXAMPLES=20000 .venv/bin/python -m pytest tests/test_extract_fuzz.py -q
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import re
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from objathor_release.errors import ReleaseError
from objathor_release.fetch.extract import ExpectedMember, TarStreamExtractor
from tests.support.hostile_tars import BLOCK

EXAMPLES = int(os.environ.get("OBJATHOR_FUZZ_EXAMPLES", "300"))
_VARYING = re.compile(r"'[^']*'|b'[^']*'|sha256:[0-9a-f]+|[0-9]+")  # names and numbers, left out of the statistics


def _valid_tar(fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        def add(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mode, info.mtime = kind, link, 0o644, 1_700_000_000
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)

        add("assets", tarfile.DIRTYPE)
        add("assets/u1", tarfile.DIRTYPE)
        add("assets/u1/a.jpg", data=b"jpeg" * 100)
        add("assets/u1/empty")
        add("assets/" + "long" * 30 + "/f.bin", data=b"L" * 600)
        add("assets/u2/hard.jpg", tarfile.LNKTYPE, link="assets/u1/a.jpg")
        add("assets/u2/b.bin", data=bytes(range(256)))
    return buf.getvalue()


def _expected(data: bytes) -> dict[str, ExpectedMember]:
    """The manifest's view of a valid tar: each regular file's size, sha256 and data offset."""
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return {m.name: ExpectedMember(m.size, hashlib.sha256(tf.extractfile(m).read()).hexdigest(),  # type: ignore[union-attr]
                                       m.offset_data) for m in tf.getmembers() if m.isreg()}


BASES = [_valid_tar(fmt) for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT)]
EXPECTED = {base: _expected(base) for base in BASES}
FIELDS = [(0, 100), (100, 108), (124, 136), (136, 148), (156, 157), (157, 257), (257, 265), (345, 500)]


def _fix_checksum(data: bytearray, block: int) -> None:
    start = block * BLOCK
    if start + BLOCK > len(data):
        return
    data[start + 148:start + 156] = b" " * 8
    data[start + 148:start + 156] = b"%06o\0 " % sum(data[start:start + BLOCK])


@st.composite
def mutated_tars(draw: st.DrawFn) -> tuple[bytes, dict[str, ExpectedMember] | None]:
    base = draw(st.sampled_from(BASES))
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "field", "field", "field", "splice"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= draw(st.integers(1, 255))
        elif op == "insert":  # random bytes, or whole blocks at a block boundary
            if draw(st.booleans()):
                data[pos:pos] = draw(st.binary(min_size=1, max_size=600))
            else:
                at = pos - pos % BLOCK
                data[at:at] = draw(st.binary(min_size=BLOCK, max_size=BLOCK)) * draw(st.integers(1, 2))
        elif op == "delete":
            if draw(st.booleans()):
                del data[pos:pos + draw(st.integers(1, 600))]
            else:
                at = pos - pos % BLOCK
                del data[at:at + BLOCK * draw(st.integers(1, 2))]
        elif op == "truncate":
            del data[pos:]
        elif op == "field":
            block = draw(st.integers(0, max(len(data) // BLOCK - 1, 0)))
            lo, hi = draw(st.sampled_from(FIELDS))
            start = block * BLOCK
            if start + hi <= len(data):
                data[start + lo:start + hi] = draw(st.binary(min_size=hi - lo, max_size=hi - lo))
                if draw(st.integers(0, 3)):
                    _fix_checksum(data, block)
        elif op == "splice" and len(data) >= 2 * BLOCK:
            blocks = len(data) // BLOCK
            src, dst = draw(st.integers(0, blocks - 1)), draw(st.integers(0, blocks))
            data[dst * BLOCK:dst * BLOCK] = data[src * BLOCK:(src + 1) * BLOCK]
    return bytes(data), (EXPECTED[base] if draw(st.booleans()) else None)


arbitrary = st.tuples(st.binary(max_size=3000), st.none())
streams = st.one_of(arbitrary, mutated_tars(), mutated_tars(), mutated_tars())
pieces = st.lists(st.integers(1, 1600), min_size=1, max_size=12)


@pytest.fixture(scope="module")
def arena(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("fuzz")


def _snapshot(root: Path, skip: Path) -> dict[str, tuple[int, int, bytes]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if Path(dirpath) / d != skip]
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st_ = p.lstat()
            out[str(p)] = (st_.st_mode, st_.st_ino, p.read_bytes() if stat.S_ISREG(st_.st_mode) else b"")
    return out


def _check_tree(dest: Path, top: str | None, outside_inodes: set[int]) -> None:
    entries = os.listdir(dest)
    assert top is not None and entries == [top], entries
    assert stat.S_ISDIR((dest / top).lstat().st_mode)
    for dirpath, dirnames, filenames in os.walk(dest / top):
        for name in dirnames + filenames:
            st_ = (Path(dirpath) / name).lstat()
            assert stat.S_ISDIR(st_.st_mode) or stat.S_ISREG(st_.st_mode), f"{dirpath}/{name}: {st_.st_mode:o}"
            assert st_.st_ino not in outside_inodes, f"{dirpath}/{name} is a hard link to a file outside"


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(stream=streams, sizes=pieces)
def test_any_stream_is_extracted_safely_or_refused_in_one_line(
        arena: Path, stream: tuple[bytes, dict[str, ExpectedMember] | None], sizes: list[int]) -> None:
    data, expect = stream
    root = Path(tempfile.mkdtemp(dir=arena))
    try:
        (root / "outside" / "sub").mkdir(parents=True)
        (root / "outside" / "secret.txt").write_text("sentinel\n")
        dest = root / "a" / "b" / "dest"  # '../..' from dest lands in root
        dest.mkdir(parents=True)
        before = _snapshot(root, dest)
        outside_inodes = {st_.st_ino for p in (root / "outside").rglob("*") if (st_ := p.lstat())}
        fds = len(os.listdir("/proc/self/fd"))
        ex = TarStreamExtractor(dest, source="fuzz.tar", expect=expect)
        try:
            pos = 0
            for size in itertools.cycle(sizes):
                if pos >= len(data):
                    break
                ex.feed(data[pos:pos + size])
                pos += size
            ex.finish()
        except ReleaseError as exc:
            message = str(exc)
            assert message and "\n" not in message, repr(message)
            event(f"refused: {type(exc).__name__}: {re.sub(_VARYING, '_', message.partition(': ')[2])[:40]}")
        else:
            _check_tree(dest, ex.top, outside_inodes)
            event("extracted")
        assert len(os.listdir("/proc/self/fd")) == fds, "descriptors left open"
        assert _snapshot(root, dest) == before, "something outside the destination changed"
    finally:
        shutil.rmtree(root)
