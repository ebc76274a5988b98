"""The safe extractor against hostile tars: links, type changes, header garbage, names, a full disk.

Most cases feed forged byte streams (tests/hostile_tars.py) straight into
TarStreamExtractor, whole and in random piece sizes, inside a sentinel folder
whose every entry is compared before and after; a few go end to end through
the real nginx and the CLI to check the exit code, the one-line message and
that the staging folder is gone.
"""

from __future__ import annotations

import hashlib
import os
import random
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devtools.nginx import Nginx
from objathor_release.errors import ChecksumError, DiskFullError, InputError, ReleaseError
from objathor_release.fetch.extract import (
    ExpectedMember,
    TarStreamExtractor,
    UnsafeMemberError,
    expected_members,
)
from tests.conftest import run_cli
from tests.support.hostile_tars import (
    base256,
    directory,
    end,
    feed_in_chunks,
    file,
    gnu_long_name,
    hardlink,
    member,
    pax,
    raw_header,
    symlink,
    tar,
)
from tests.support.tmpfs import mounted_tmpfs

SOURCE = "assets.tar"
CHUNKINGS = [(None, 0), (random.Random(11), 2000), (random.Random(12), 7)]


@dataclass
class Jail:
    """A sentinel folder with files and folders; ``dest`` is two levels below, ``../..`` lands in ``root``."""

    root: Path
    outside: Path

    def snapshot(self) -> dict[str, tuple[int, int, bytes]]:
        """Every entry outside the extraction area: (mode, inode, content or link target)."""
        out = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            if Path(dirpath) == self.root:
                dirnames[:] = [d for d in dirnames if d != "area"]
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.lstat()
                body = (os.readlink(p).encode() if stat.S_ISLNK(st.st_mode)
                        else p.read_bytes() if stat.S_ISREG(st.st_mode) else b"")
                out[str(p.relative_to(self.root))] = (st.st_mode, st.st_ino, body)
        return out

    def fresh_dest(self) -> Path:
        dest = self.root / "area" / uuid.uuid4().hex[:8] / "dl"
        dest.mkdir(parents=True)
        return dest


@pytest.fixture
def jail(tmp_path: Path) -> Iterator[Jail]:
    root = tmp_path / "jail"
    outside = root / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "secret.txt").write_text("do not touch\n")
    (outside / "sub" / "other.txt").write_text("nor this\n")
    (root / "area").mkdir()
    j = Jail(root, outside)
    before = j.snapshot()
    yield j
    assert j.snapshot() == before, "something outside the extraction folder changed"


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def assert_contained(jail: Jail, dest: Path, planted: Path | None = None) -> None:
    """No symlink under dest (but the test's ``planted`` one), no file there shares an inode with one outside."""
    outside = {st.st_ino for p in jail.outside.rglob("*") if (st := p.lstat()) and stat.S_ISREG(st.st_mode)}
    for dirpath, dirnames, filenames in os.walk(dest):
        for name in dirnames + filenames:
            st = (Path(dirpath) / name).lstat()
            if Path(dirpath) / name == planted:
                continue
            assert not stat.S_ISLNK(st.st_mode), f"a link was left at {dirpath}/{name}"
            assert st.st_ino not in outside, f"{dirpath}/{name} is a hard link to a file outside"


def extract(dest: Path, data: bytes, rng: random.Random | None = None, largest: int = 2000,
            **kwargs: object) -> TarStreamExtractor:
    ex = TarStreamExtractor(dest, source=SOURCE, **kwargs)  # type: ignore[arg-type]
    feed_in_chunks(ex, data, rng, largest)
    ex.finish()
    return ex


def refused(jail: Jail, data: bytes, match: str, kind: type[ReleaseError] = InputError,
            dest: Path | None = None, planted: Path | None = None, **kwargs: object) -> str:
    """Extract ``data`` whole and in random pieces; each time it must fail with ``kind`` and ``match``."""
    message = ""
    for rng, largest in CHUNKINGS:
        target = dest if dest is not None else jail.fresh_dest()
        fds = open_fds()
        with pytest.raises(kind) as err:
            extract(target, data, rng, largest, **kwargs)
        message = str(err.value)
        assert "\n" not in message and message.startswith(SOURCE), message
        assert match in message, message
        assert err.value.exit_code == kind.exit_code
        assert open_fds() == fds, "the extractor left descriptors open"
        assert_contained(jail, target, planted)
    return message


# ---------------------------------------------------------------------- links

SYMLINK_CASES = {  # case: (members after the good start, the member the refusal names)
    "a -> .. then b -> a/..": ([symlink("assets/u1/a", ".."), symlink("assets/u1/b", "a/..")], "assets/u1/a"),
    "a -> ../.. then b -> a/../../..": ([directory("assets/u1/d"), symlink("assets/u1/d/a", "../.."),
                                        symlink("assets/u1/d/b", "a/../../..")], "assets/u1/d/a"),
    "p -> . then a long p/p/p chain": ([symlink("assets/p", "."), symlink("assets/q", "p/p/p/p/p/../../../../..")],
                                       "assets/p"),
    "a link then a file through it": ([symlink("assets/up", ".."), file("assets/up/ESCAPED")], "assets/up"),
    "a link then a folder through it": ([symlink("assets/u2", "u1"), directory("assets/u2/ESCAPED")],
                                        "assets/u2"),
    "a link then a hard link through it": ([symlink("assets/v", "../../outside"),
                                            hardlink("assets/v/secret.txt", "assets/u1/a.jpg")], "assets/v"),
    "a link that stays inside": ([symlink("assets/u1/same", "a.jpg")], "assets/u1/same"),
    "an absolute link": ([symlink("assets/u1/etc", "/etc")], "assets/u1/etc"),
    "a PAX linkpath": ([pax({"linkpath": "../../.."}), symlink("assets/u1/l", "harmless")], "assets/u1/l"),
    "a link replacing a file": ([symlink("assets/u1/a.jpg", "../../../outside/secret.txt")], "assets/u1/a.jpg"),
}


@pytest.mark.parametrize("case", sorted(SYMLINK_CASES))
def test_every_symlink_is_refused(jail: Jail, case: str) -> None:
    members, name = SYMLINK_CASES[case]
    message = refused(jail, tar(*members), f"refused member {name!r}: a symbolic link", UnsafeMemberError)
    assert "nothing was extracted outside" in message


HARDLINK_CASES = {  # case: (members after the good start, what the message says)
    "to a folder": ([hardlink("assets/u1/h", "assets/u1")], "which is not a file extracted earlier"),
    "to the top folder": ([hardlink("assets/u1/h", "assets")], "which is not a file extracted earlier"),
    "to a missing file": ([hardlink("assets/u1/h", "assets/u1/nope.jpg")], "not a file extracted earlier"),
    "to a later file": ([hardlink("assets/u1/h", "assets/u1/b.jpg"), file("assets/u1/b.jpg")],
                        "not a file extracted earlier"),
    "to outside with ..": ([hardlink("assets/u1/h", "../outside/secret.txt")], "'..' component"),
    "to an absolute path": ([hardlink("assets/u1/h", "/etc/passwd")], "absolute path"),
    "to another top folder": ([hardlink("assets/u1/h", "outside/secret.txt")], "not a file extracted earlier"),
    "to an empty name": ([hardlink("assets/u1/h", "")], "not a file extracted earlier"),
    "to itself": ([hardlink("assets/u1/a.jpg", "assets/u1/a.jpg")], "hard link to itself"),
    "over a folder": ([directory("assets/u2"), hardlink("assets/u2", "assets/u1/a.jpg")],
                      "would replace a folder"),
    "over the top folder's child folder": ([hardlink("assets/u1", "assets/u1/a.jpg")], "would replace a folder"),
}


@pytest.mark.parametrize("case", sorted(HARDLINK_CASES))
def test_hard_links_only_to_files_extracted_earlier(jail: Jail, case: str) -> None:
    members, match = HARDLINK_CASES[case]
    refused(jail, tar(*members), match, UnsafeMemberError)


def test_a_hard_link_to_an_extracted_file_is_kept(jail: Jail) -> None:
    dest = jail.fresh_dest()
    extract(dest, tar(directory("assets/u2"), hardlink("assets/u2/same.jpg", "assets/u1/a.jpg"),
                      hardlink("./assets/u2/again.jpg", "./assets/u2/same.jpg")))
    first, link, again = (dest / "assets" / p for p in ("u1/a.jpg", "u2/same.jpg", "u2/again.jpg"))
    assert link.read_bytes() == again.read_bytes() == b"jpeg"
    assert first.stat().st_ino == link.stat().st_ino == again.stat().st_ino
    assert_contained(jail, dest)


def test_links_planted_in_the_staging_folder_are_never_followed(jail: Jail) -> None:
    secret = jail.outside / "secret.txt"
    # a planted link where a folder of the archive goes
    for planted in ("assets", "assets/u1"):
        dest = jail.fresh_dest()
        (dest / planted).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(jail.outside, dest / planted)
        refused(jail, tar(), f"{planted} is already a file or a link, not a folder", UnsafeMemberError,
                dest=dest, planted=dest / planted)
    # a planted link where a file of the archive goes: replaced by the file, its target untouched
    dest = jail.fresh_dest()
    (dest / "assets" / "u1").mkdir(parents=True)
    os.symlink(secret, dest / "assets" / "u1" / "a.jpg")
    extract(dest, tar())
    assert (dest / "assets" / "u1" / "a.jpg").read_bytes() == b"jpeg"
    assert_contained(jail, dest)
    # a hard link to a planted link (or any file the archive did not write) is refused
    dest = jail.fresh_dest()
    (dest / "assets" / "u1").mkdir(parents=True)
    os.symlink(secret, dest / "assets" / "u1" / "planted")
    os.link(secret, dest / "assets" / "u1" / "planted-hard")
    for target in ("planted", "planted-hard"):
        with pytest.raises(UnsafeMemberError, match="not a file extracted earlier"):
            extract(dest, tar(hardlink("assets/u1/h", f"assets/u1/{target}")))
    assert not (dest / "assets" / "u1" / "h").exists()
    # the staging folder itself is a link
    real = jail.fresh_dest()
    link = real.parent / "link"
    os.symlink(jail.outside, link)
    with pytest.raises(InputError, match="cannot extract member 'assets'") as err:
        extract(link, tar())
    assert "\n" not in str(err.value)
    assert not (jail.outside / "assets").exists()


# ---------------------------------------------------------------------- one path, two types

TYPE_CASES = {
    "a file where a folder is": ([file("assets/u1/a.jpg/b")], "assets/u1/a.jpg is already a file or a link"),
    "a folder member where a file was written": ([directory("assets/u1/a.jpg")],
                                                  "assets/u1/a.jpg is already a file or a link"),
    "a file over a folder": ([file("assets/u1")], "would replace a folder"),
    "a folder, then a file of its name": ([directory("assets/u2"), file("assets/u2", b"y")],
                                          "would replace a folder"),
    "a file at the top": ([file("assets", b"y")], "the top-level entry must be a directory"),
    "a file as the archive's root": ([file("./", b"y")], "cannot be the archive's root"),
}


@pytest.mark.parametrize("case", sorted(TYPE_CASES))
def test_a_path_never_changes_its_type(jail: Jail, case: str) -> None:
    members, match = TYPE_CASES[case]
    refused(jail, tar(*members), match, UnsafeMemberError)


def test_a_repeated_file_replaces_the_earlier_copy(jail: Jail) -> None:
    dest = jail.fresh_dest()
    extract(dest, tar(file("assets/u1/a.jpg", b"second")))
    assert (dest / "assets" / "u1" / "a.jpg").read_bytes() == b"second"


# ---------------------------------------------------------------------- header garbage

AT = 4 * 512  # the byte where the member after the good start begins


def _pax_file(records: bytes | dict[str, bytes | str]) -> bytes:
    return pax(records) + file("assets/u1/b.jpg", b"bbbb")


GARBAGE = {  # case: (members after the good start, what the message says)
    "size with letters": ([file("assets/u1/b", size=b"12abc")], f"corrupt tar header at byte {AT}: its size"),
    "size in hex": ([file("assets/u1/b", size=b"0x10")], f"at byte {AT}: its size field b'0x10' is not an"),
    "size with a sign": ([file("assets/u1/b", size=b"+7")], "is not an octal number"),
    "size with an underscore": ([file("assets/u1/b", size=b"1_0")], "is not an octal number"),
    "size with a digit 8": ([file("assets/u1/b", size=b"00000000018")], "is not an octal number"),
    "size with inner spaces": ([file("assets/u1/b", size=b" 1 2")], "is not an octal number"),
    "mode with letters": ([file("assets/u1/b", mode=b"rwxr-x")], "its mode field"),
    "mtime with letters": ([file("assets/u1/b", mtime=b"yesterday")], "its mtime field"),
    "base-256 negative size": ([file("assets/u1/b", size=base256(-1))], "its size -1 is out of range"),
    "base-256 absurd size": ([file("assets/u1/b", size=base256(1 << 80))], "is out of range"),
    "base-256 bad lead byte": ([file("assets/u1/b", size=b"\x81" + bytes(11))], "is not an octal number"),
    "base-256 mtime beyond os.utime": ([file("assets/u1/b", mtime=base256(1 << 80))], "its mtime"),
    "base-256 mtime far negative": ([file("assets/u1/b", mtime=base256(-(1 << 70)))], "its mtime"),
    "huge long-name header": ([member("././@LongLink", kind=b"L", size=base256(1 << 40))], "its size"),
    "PAX size nan": ([_pax_file({"size": "nan"})], "its PAX size b'nan' is not a decimal number"),
    "PAX size inf": ([_pax_file({"size": "inf"})], "its PAX size b'inf'"),
    "PAX size 1e999": ([_pax_file({"size": "1e999"})], "its PAX size b'1e999'"),
    "PAX size abc": ([_pax_file({"size": "abc"})], "its PAX size b'abc'"),
    "PAX size negative": ([_pax_file({"size": "-1"})], "its PAX size b'-1'"),
    "PAX size empty": ([_pax_file({"size": ""})], "its PAX size b''"),
    "PAX size fraction": ([_pax_file({"size": "5.5"})], "its PAX size b'5.5'"),
    "PAX size too big": ([_pax_file({"size": "9" * 19})], "is out of range"),
    "PAX mtime nan": ([_pax_file({"mtime": "nan"})], "its PAX mtime b'nan'"),
    "PAX mtime inf": ([_pax_file({"mtime": "-inf"})], "its PAX mtime b'-inf'"),
    "PAX mtime 1e999": ([_pax_file({"mtime": "1e999"})], "its PAX mtime b'1e999'"),
    "PAX mtime abc": ([_pax_file({"mtime": "abc"})], "its PAX mtime b'abc'"),
    "PAX mtime beyond os.utime": ([_pax_file({"mtime": "9" * 19})], "its PAX mtime 9999999999999999999 is out"),
    "PAX record longer than the header": ([_pax_file(b"99 path=x\n")], "has a wrong length"),
    "PAX record too short": ([_pax_file(b"5 path=abcdef\n")], "has a wrong length"),
    "PAX length not a number": ([_pax_file(b"ab path=x\n")], "has no decimal length"),
    "PAX length with a sign": ([_pax_file(b"+11 path=x\n")], "has no decimal length"),
    "PAX length missing": ([_pax_file(b"path=assets/x\n")], "has no decimal length"),
    "PAX record without =": ([_pax_file(b"12 pathxxxx\n")], "is not key=value"),
    "PAX record without newline": ([_pax_file(b"11 path=abc")], "has a wrong length"),
    "PAX key not UTF-8": ([_pax_file(b"10 \xff\xfe=abc\n")], "its PAX key"),
    "bad header checksum": ([file("assets/u1/b", checksum=b"000000\0 ")], f"bad tar header checksum at byte {AT}"),
    "checksum not a number": ([file("assets/u1/b", checksum=b"zzzzzz\0 ")], "bad tar header checksum"),
    "data after the end block": ([bytes(512), file("assets/u1/b")], "data after an end-of-archive block"),
}


@pytest.mark.parametrize("case", sorted(GARBAGE))
def test_header_garbage_is_one_line_corrupt_archive(jail: Jail, case: str) -> None:
    members, match = GARBAGE[case]
    message = refused(jail, tar(*members), match)
    assert "Traceback" not in message


NOT_A_TAR = {
    "a JSON error page": b'{"error": "NoSuchKey", "message": "The specified key does not exist."}\n',
    "an XML error page": b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code></Error>',
    "a JSON list": b'  [1, 2, 3]',
    "a short JSON error": b'{"error": "NoSuchKey"}',
    "an HTML page": b"<!doctype html><html><body>Sign in</body></html>",
}


@pytest.mark.parametrize("case", sorted(NOT_A_TAR))
def test_an_error_page_instead_of_a_tar(jail: Jail, case: str) -> None:
    for data in (NOT_A_TAR[case], NOT_A_TAR[case] * 40):
        refused(jail, data, f"{SOURCE} is not a tar file: it starts with")


def test_random_bytes_truncation_and_emptiness(jail: Jail) -> None:
    rng = random.Random(5)
    for _ in range(5):
        refused(jail, bytes(rng.randrange(256) for _ in range(1500)), "at byte 0")
    refused(jail, tar()[:700], "ended in the middle of a member at byte 700: the download was truncated")
    refused(jail, tar()[:1537], "truncated")
    refused(jail, b"", "is empty (0 bytes)")
    refused(jail, end(), "is empty: expected one top-level directory")


# ---------------------------------------------------------------------- names

NAME_CASES = {
    "not UTF-8 in the header": ([file(b"assets/u1/\xff\xfe.jpg")], "its name b'assets/u1/\\xff\\xfe.jpg' is not UTF-8"),
    "not UTF-8 in a PAX path": ([pax({"path": b"assets/u1/\xc3("}), file("assets/u1/x")], "its PAX path"),
    "not UTF-8 in a GNU long name": ([gnu_long_name(b"assets/u1/\x80" * 20), file("assets/u1/x")],
                                     "its long name"),
    "not UTF-8 in a link name": ([hardlink("assets/u1/h", b"assets/u1/\xff")], "its link name"),
    "not UTF-8 in a ustar prefix": ([raw_header("x.jpg", prefix=b"assets/\xff")], "its name"),
    "a NUL in a PAX path": ([pax({"path": "assets/u1/a\0b"}), file("assets/u1/x")], "NUL in its name"),
    "a component longer than NAME_MAX": ([pax({"path": "assets/u1/" + "n" * 300}), file("assets/u1/x")],
                                         "cannot extract member 'assets/u1/nnn"),
    "a folder longer than NAME_MAX": ([pax({"path": "assets/" + "d" * 256 + "/"}), directory("x")],
                                      "File name too long"),
    "a path longer than PATH_MAX": ([pax({"path": "assets/" + "/".join(["p" * 200] * 25)}), file("assets/x")],
                                    "longer than the 4096 bytes"),
    "a path 65 levels deep": ([pax({"path": "assets/" + "p/" * 63 + "x"}), file("assets/x")],
                              "its path is 65 levels deep, more than the 64 allowed"),
    "a p/p/p path 2000 levels deep": ([pax({"path": "assets/" + "p/" * 2000}), directory("assets/x")],
                                      "2001 levels deep"),
    "a '..' in a PAX path": ([pax({"path": "assets/../../outside/x"}), file("assets/u1/x")], "'..' component"),
    "an absolute PAX path": ([pax({"path": str(Path("/tmp") / uuid.uuid4().hex)}), file("assets/u1/x")],
                             "absolute path"),
    "a second top folder": ([directory("other"), file("other/x")], "outside the one top-level directory"),
}


@pytest.mark.parametrize("case", sorted(NAME_CASES))
def test_bad_names(jail: Jail, case: str) -> None:
    members, match = NAME_CASES[case]
    refused(jail, tar(*members), match)


CONTROL_CASES = {  # names with a newline or a terminal escape still give one line, escaped
    "a refused link": ([symlink("assets/u1/\nx\x1b[2J", "..")], "refused member 'assets/u1/\\nx\\x1b[2J'"),
    "a name too long": ([pax({"path": "assets/u1/\n" + "n" * 300}), file("assets/u1/x")],
                        "to " + "{dest}" + "/assets/u1/\\nnnn"),
    "a file where a folder is": ([file("assets/u1/new\nline"), file("assets/u1/new\nline/x")],
                                 "assets/u1/new\\nline is already a file"),
}


@pytest.mark.parametrize("case", sorted(CONTROL_CASES))
def test_control_characters_in_names_stay_on_one_line(jail: Jail, case: str) -> None:
    members, match = CONTROL_CASES[case]
    dest = jail.fresh_dest()
    refused(jail, tar(*members), match.replace("{dest}", str(dest)), dest=dest)


def test_control_characters_in_manifest_messages_stay_on_one_line(jail: Jail) -> None:
    expect = {"assets/u1/a.jpg": ExpectedMember(4, hashlib.sha256(b"jpeg").hexdigest())}
    refused(jail, tar(file("assets/u1/b\n\x1b]0;x\x07.jpg")), "member assets/u1/b\\n\\x1b]0;x\\x07.jpg is not listed",
            ChecksumError, expect=expect)
    refused(jail, tar(), "lacks 1 member(s) listed in manifest.json, e.g. assets/u1/\\r.jpg", ChecksumError,
            expect={**expect, "assets/u1/\r.jpg": ExpectedMember(1, "0" * 64)})


# ---------------------------------------------------------------------- what must still work


def test_deep_paths_many_folders_and_header_variants_extract(jail: Jail) -> None:
    deep = "assets/" + "p/" * 62 + "leaf.bin"  # 64 levels, the most allowed
    folders = [directory(f"assets/f{i:03d}") + file(f"assets/f{i:03d}/x", bytes([i])) for i in range(150)]
    data = tar(
        pax({"path": deep, "mtime": "1600000000.25"}), file("ignored", b"deep"),
        *folders,
        file("assets/u1/base256.bin", b"0123456789", size=base256(10), mtime=base256(1_500_000_000)),
        file("assets/u1/spaces.bin", b"abc", size=b"        3 ", mode=b" 4755 \0"),
        file("assets/u1/old.bin", b"z", mtime=base256(-86400)),
        file("x.jpg", b"pre", prefix=b"assets/u1"),
        pax({"comment": "ignored", "hdrcharset": "ISO-IR 10646 2000 UTF-8"}) + file("assets/u1/pax.bin", b"p"),
    )
    for rng, largest in CHUNKINGS:
        dest = jail.fresh_dest()
        fds = open_fds()
        extract(dest, data, rng, largest)
        assert open_fds() == fds
        top = dest / "assets"
        st = (top / ("p/" * 62 + "leaf.bin")).stat()
        assert st.st_size == 4 and st.st_mtime == 1600000000
        assert all((top / f"f{i:03d}" / "x").read_bytes() == bytes([i]) for i in range(150))
        assert (top / "u1" / "base256.bin").read_bytes() == b"0123456789"
        assert (top / "u1" / "base256.bin").stat().st_mtime == 1_500_000_000
        spaces = (top / "u1" / "spaces.bin").stat()
        assert stat.S_IMODE(spaces.st_mode) & 0o7000 == 0 and (top / "u1" / "spaces.bin").read_bytes() == b"abc"
        assert (top / "u1" / "x.jpg").read_bytes() == b"pre"
        assert (top / "u1" / "pax.bin").read_bytes() == b"p"
        assert_contained(jail, dest)


# ---------------------------------------------------------------------- a full disk


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs with 40 inodes (needs root and mount; skipped otherwise)."""
    with mounted_tmpfs(tmp_path / "small", "size=256k,nr_inodes=40") as mnt:
        yield mnt


def test_a_full_disk_is_one_line_naming_the_path_and_the_size(small_disk: Path) -> None:
    dest = small_disk / "dl"
    dest.mkdir()
    fds = open_fds()
    with pytest.raises(DiskFullError) as err:
        extract(dest, tar(file("assets/u1/big.bin", os.urandom(1024 * 1024))))
    message = str(err.value)
    assert "\n" not in message and err.value.exit_code == 1
    assert f"writing {dest}/assets/u1/big.bin failed (the member is 1048576 bytes)" in message
    assert "free space and run the command again" in message
    assert open_fds() == fds
    # out of inodes: creating a folder fails the same way
    out = small_disk / "dl2"
    out.mkdir()
    with pytest.raises(DiskFullError, match=r"the disk is full: writing .*/dl2/assets/\S+ failed"):
        extract(out, tar(*(directory(f"assets/d{i}") for i in range(60))))
    assert open_fds() == fds


# ---------------------------------------------------------------------- end to end through nginx

V = "2024_02_01"
E2E = {  # case: (the tar served as assets.tar, what the one error line says)
    "the ../.. link chain": (tar(directory("assets/u1/d"), symlink("assets/u1/d/a", "../.."),
                                 symlink("assets/u1/d/b", "a/../../.."), file("assets/u1/d/b/ESCAPED")),
                             "refused member 'assets/u1/d/a': a symbolic link"),
    "a hard link to a folder": (tar(hardlink("assets/u1/h", "assets/u1")), "which is not a file extracted"),
    "a size that is not octal": (tar(file("assets/u1/b", size=b"0x10")), f"corrupt tar header at byte {AT}: its size field b'0x10' is not"),
    "a PAX size of nan": (tar(_pax_file({"size": "nan"})), "its PAX size b'nan' is not a decimal number"),
    "a JSON error page": (b'{"error": "NoSuchKey"}' + bytes(2000), "assets.tar is not a tar file"),
}


@pytest.mark.parametrize("case", sorted(E2E))
def test_hostile_tar_through_nginx_and_the_cli(web: Nginx, tmp_path: Path, case: str) -> None:
    folder = f"hostile-{uuid.uuid4().hex[:8]}"
    (web.root / folder / V).mkdir(parents=True)
    data, match = E2E[case]
    (web.root / folder / V / "assets.tar").write_bytes(data)
    jail = Jail(tmp_path / "jail", tmp_path / "jail" / "outside")
    (jail.outside).mkdir(parents=True)
    (jail.outside / "secret.txt").write_text("x")
    dest = jail.root / "area" / "dl"
    dest.mkdir(parents=True)
    before = jail.snapshot()
    proc = run_cli("download", "assets", "--version", V, "--path", str(dest), "--base-url",
                   f"{web.url}/{folder}", env={"OBJATHOR_PROGRESS": "0", "OBJATHOR_DOWNLOAD_BACKOFF": "0.01"},
                   timeout=60)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and match in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (dest / V / "assets").exists()
    assert not list(dest.rglob("*staging*"))
    assert_contained(jail, dest)
    assert jail.snapshot() == before


# ---------------------------------------------------------------------- the manifest's member list

MALFORMED_MEMBERS: list[object] = [
    [{"size": 1, "sha256": "0" * 64}],  # no path
    [{"path": "assets/a", "size": "1", "sha256": "0" * 64}],  # size as text
    [{"path": "assets/a", "size": -1, "sha256": "0" * 64}],
    [{"path": "assets/a", "size": True, "sha256": "0" * 64}],
    [{"path": "assets/a", "size": 1, "sha256": "xyz"}],
    [{"path": "assets/a", "size": 1, "sha256": "0" * 64, "offset": 1.5}],
    [["assets/a", 1, "0" * 64]],
    ["assets/a"],
    [None],
]


@pytest.mark.parametrize("members", MALFORMED_MEMBERS, ids=range(len(MALFORMED_MEMBERS)))
def test_a_malformed_member_list_is_one_line(members: object) -> None:
    with pytest.raises(InputError, match=r"^manifest.json: member #0 of an artifact is malformed") as err:
        expected_members(members)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)
    good = expected_members([{"path": "assets/a", "size": 1, "sha256": "AB" * 32, "offset": 512}])
    assert good["assets/a"].sha256 == "ab" * 32 and good["assets/a"].offset == 512
