"""Find every asset of a tree and read its annotation and thor_metadata, strictly (in worker processes).

``scan_assets`` lists ASSETS_DIR/<uid>/ folders and ASSETS_DIR/<uid>.tar files;
``load_one`` reads and validates one of them and returns its serialized JSON or
its problems (:class:`Problem`, one line each). :mod:`.annotations` runs
``load_batch`` in worker processes and merges the results.

Input is read defensively, since an asset tree may come from anywhere. Files
are opened without following symlinks or blocking (a symlinked uid folder,
<uid>.tar or annotation, a FIFO or a device is refused, as ``tar`` refuses
them). Each annotation is decompressed a chunk at a time up to a limit
(``--max-annotation-size``, 64 MiB by default), which also bounds
thor_metadata.json and the members of a <uid>.tar, read by the same bounded
tar parser as the release's tars. JSON must be strict: UTF-8, an object at the
top, no NaN or Infinity, numbers in range, at most 64 levels of nesting and a
bounded number of values, and no duplicate keys (JSON parsers disagree on
which of two values wins, so such a file is refused rather than guessed at).
Every failure is one problem line naming the uid and the file, also from a
worker process.
"""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from objathor_release.build import tarformat
from objathor_release.build.tarscan import SeekingReader, TarFormatError, iter_headers
from objathor_release.build.validation import schema_validator, too_deep
from objathor_release.errors import InputError
from objathor_release.fsutil import NotRegularFileError, describe_mode, open_regular
from objathor_release.settings import MiB, format_size

ANNOTATION = "annotations.json.gz"
THOR_METADATA = "thor_metadata.json"
UID_TAR_RE = re.compile(r"^[0-9a-f]{32}\.tar$")
MAX_MESSAGE = 240
DEFAULT_MAX_SIZE = 64 * MiB  # per file, decompressed; real annotations are a few KB
MAX_DEPTH = 64  # JSON nesting; real annotations and thor metadata nest 4 deep
MAX_TAR_MEMBERS = 10_000  # in one per-asset <uid>.tar
MAX_ERRORS = 20  # schema errors listed per asset
MAX_VALUES = 1_000_000  # JSON values per file (at least; a larger size limit allows 1 per 64 bytes)
GUNZIP_CHUNK = 256 * 1024
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Problem:
    uid: str
    file: str
    path: str  # JSON path of the failing field, "$" for the whole file
    message: str

    def line(self) -> str:
        return _one_line(f"{self.uid}: {self.file}: {self.path}: {self.message}")


# --------------------------------------------------------------------------- scanning


@dataclass(frozen=True)
class AssetSource:
    uid: str
    folder: str | None  # ASSETS_DIR/<uid>
    tar: str | None  # ASSETS_DIR/<uid>.tar
    refused: tuple[str, str] | None = None  # (path, message): an entry that is never read


def _refusal(entry: os.DirEntry[str]) -> str | None:
    """Why a top-level entry cannot be an asset (a symlink or special file), or None if it can."""
    try:
        if entry.is_symlink():
            try:
                target = os.readlink(entry.path)
            except OSError:
                target = "?"
            return (f"is a symlink (to {target}): symlinks are not followed (tar refuses them too); "
                    "put the real folder or file here")
        if entry.is_dir(follow_symlinks=False) or entry.is_file(follow_symlinks=False):
            return None
        mode = entry.stat(follow_symlinks=False).st_mode
    except OSError as exc:
        return f"cannot be read ({exc.strerror}): check it"
    return f"is {describe_mode(mode)}: remove it from the assets directory"


def scan_assets(save_dir: Path) -> list[AssetSource]:
    """The assets under ``save_dir``, sorted by uid. Junk at the top level is ignored; a symlink or
    special file there (other than junk) becomes a refused asset named after it."""
    if not save_dir.is_dir():
        raise InputError(f"{save_dir}: assets directory not found: pass the folder of optimized assets")
    folders: dict[str, str] = {}
    tars: dict[str, str] = {}
    refused: dict[str, tuple[str, str]] = {}
    try:
        with os.scandir(save_dir) as it:
            entries = list(it)
    except OSError as exc:
        raise InputError(f"{save_dir}: cannot list the assets directory ({exc.strerror})") from None
    for entry in entries:
        name = entry.name
        if name.startswith(".") or name.endswith(".lock"):
            continue  # .DS_Store, ._*, .Spotlight-V100, .Trashes, ..., *.lock
        is_tar = UID_TAR_RE.match(name) is not None
        why = _refusal(entry)
        if why is not None:
            refused[name[:-4] if is_tar else name] = (entry.path, why)
        elif entry.is_dir(follow_symlinks=False):
            folders[name] = entry.path
        elif is_tar:
            tars[name[:-4]] = entry.path
    uids = sorted(set(folders) | set(tars) | set(refused))
    if not uids:
        raise InputError(f"{save_dir}: no asset folders or <uid>.tar files found: check --save-dir")
    return [AssetSource(uid, folders.get(uid), tars.get(uid), refused.get(uid)) for uid in uids]


# --------------------------------------------------------------------------- one asset (in workers)


class _Bad(Exception):
    """One input file's problem: the file (label) and the message of its Problem line."""

    def __init__(self, file: str, message: str) -> None:
        super().__init__(file, message)
        self.file = file
        self.message = message


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 3] + "..."


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _too_big(limit: int, how: str = "") -> str:
    return (f"larger than {format_size(limit)}{how}: real annotations are a few KB; "
            "pass --max-annotation-size to raise the limit")


def _unreadable(exc: OSError) -> str:
    if isinstance(exc, NotRegularFileError):
        return f"cannot read ({exc.strerror}): it must be a regular file (symlinks are not followed)"
    return f"cannot read ({exc.strerror}): check the file and its permissions"


EMPTY = "empty file: re-run objathor's annotation step for this asset, or remove it"


def _gunzip(fh: BinaryIO, limit: int, label: str) -> bytearray:
    """Decompress at most ``limit`` bytes of gzip (concatenated members too), a chunk at a time, so
    memory stays within the limit and a chunk; _Bad when there is more, or it is not gzip.

    zlib directly, not GzipFile: a few KB annotation costs about a tenth of the time."""
    data = bytearray()
    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
    started = False
    try:
        while chunk := fh.read(GUNZIP_CHUNK):
            pending = chunk
            while pending:
                if inflate.eof:  # another gzip member follows (zero padding after the last is allowed)
                    if not pending.strip(b"\0"):
                        break
                    inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
                started = True
                data += inflate.decompress(pending, limit + 1 - len(data))
                if len(data) > limit:
                    raise _Bad(label, _too_big(limit, " when decompressed"))
                pending = inflate.unconsumed_tail or inflate.unused_data
    except zlib.error as exc:
        if not data and "header" in str(exc):
            raise _Bad(label, "not a gzip file: it must be gzip-compressed JSON") from None
        raise _Bad(label, _short(f"corrupt gzip data ({exc}): write it again")) from None
    if started and not inflate.eof:
        raise _Bad(label, "truncated gzip file (it ends early): write it again")
    return data


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range")
    return value


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise ValueError(f"duplicate key {dup[:60]!r}: write each key once")
    return obj


def parse_json(data: bytes | bytearray, label: str, limit: int = DEFAULT_MAX_SIZE, *,
               check_floats: bool = True) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity or out-of-range numbers, no duplicate keys, at most
    MAX_DEPTH levels of nesting, and few enough values that the parsed objects stay small (a
    document of empty objects takes 25 times its size once parsed). Raises _Bad naming ``label``."""
    max_values = max(MAX_VALUES, limit // 64)
    containers = data.count(b"[") + data.count(b"{")
    if data.count(b",") + containers > max_values:
        raise _Bad(label, f"holds more than {max_values} JSON values: real annotations hold a few hundred; "
                   "pass --max-annotation-size to raise the limit")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Bad(label, f"not valid UTF-8 (byte {exc.start}): JSON must be UTF-8 text") from None
    deep = _Bad(label, f"nested more than {MAX_DEPTH} levels deep: not an annotation")
    try:
        # check_floats=False leaves a float that overflowed to infinity for the caller to catch (its
        # json.dumps(allow_nan=False) does, at no cost): checking each float here costs a third more.
        value = json.loads(text, parse_constant=_no_constant, parse_float=_finite if check_floats else float,
                           object_pairs_hook=_unique)
    except RecursionError:
        raise deep from None
    except ValueError as exc:
        raise _Bad(label, _short(f"not valid JSON ({exc})")) from None
    if containers > MAX_DEPTH and too_deep(value, MAX_DEPTH):
        raise deep
    return value


def _choose(src: AssetSource) -> tuple[str, bool]:
    """(path of the file to read, whether it is a per-asset tar). A folder wins over a tar."""
    if src.folder is not None:
        ann_path = os.path.join(src.folder, ANNOTATION)
        if src.tar is None or os.path.lexists(ann_path):
            return ann_path, False
    assert src.tar is not None
    return src.tar, True


def _read_file(dfd: int, name: str, label: str, limit: int, gz: bool) -> bytes | bytearray | None:
    """One file of an open asset folder (None if missing), decompressed when ``gz``, within ``limit``."""
    try:
        fh = open_regular(name, dir_fd=dfd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _Bad(label, _unreadable(exc)) from None
    with fh:
        try:
            if os.fstat(fh.fileno()).st_size == 0:
                raise _Bad(label, EMPTY)
            if gz:
                return _gunzip(fh, limit, label)
            data = fh.read(limit + 1)
        except OSError as exc:
            raise _Bad(label, _unreadable(exc)) from None
    if len(data) > limit:
        raise _Bad(label, _too_big(limit))
    return data


def _read_folder(folder: str, limit: int) -> tuple[bytes | bytearray | None, bytes | bytearray | None]:
    """(decompressed annotation or None if missing, thor_metadata bytes or None if missing)."""
    try:
        dfd = os.open(folder, _OPEN_DIR)
    except OSError as exc:
        raise _Bad(folder, f"cannot read the folder ({exc.strerror}): check it") from None
    try:
        ann = _read_file(dfd, ANNOTATION, os.path.join(folder, ANNOTATION), limit, gz=True)
        if ann is None:
            return None, None
        return ann, _read_file(dfd, THOR_METADATA, os.path.join(folder, THOR_METADATA), limit, gz=False)
    finally:
        os.close(dfd)


def _read_tar(uid: str, path: str, limit: int) -> tuple[bytes | bytearray | None, bytes | bytearray | None]:
    """(decompressed annotation or None, thor_metadata bytes or None) from a per-asset tar."""
    wanted = {f"{uid}/{ANNOTATION}": ANNOTATION, f"{uid}/{THOR_METADATA}": THOR_METADATA}
    found: dict[str, bytes | bytearray] = {}
    try:
        fh = open_regular(path)
    except OSError as exc:
        raise _Bad(path, _unreadable(exc)) from None
    with fh:
        try:
            reader = SeekingReader(fh, os.fstat(fh.fileno()).st_size)
            for n, h in enumerate(iter_headers(reader)):
                if n >= MAX_TAR_MEMBERS:
                    raise _Bad(path, f"holds more than {MAX_TAR_MEMBERS} members: a per-asset tar holds "
                               "one asset's files")
                key = wanted.get(h.name.lstrip("./"))
                if key is None:
                    continue
                label = f"{path}:{uid}/{key}"
                if h.kind not in tarformat.REGULAR_TYPES:
                    raise _Bad(label, "is a link or folder in the tar: store the file itself")
                if key in found:
                    raise _Bad(label, "is in the tar twice: keep one")
                if h.size == 0:
                    raise _Bad(label, EMPTY)
                if h.size > limit:
                    raise _Bad(label, _too_big(limit))
                data = reader.read(h.size)
                if len(data) < h.size:
                    raise _Bad(path, "truncated tar archive: write it again")
                found[key] = _gunzip(io.BytesIO(data), limit, label) if key == ANNOTATION else data
        except TarFormatError as exc:
            raise _Bad(path, _short(f"{exc}: write it again with objathor or tar")) from None
        except OSError as exc:
            raise _Bad(path, _unreadable(exc)) from None
    ann = found.get(ANNOTATION)
    return ann, (found.get(THOR_METADATA) if ann is not None else None)


def _load(src: AssetSource, limit: int) -> tuple[str, bytes | None, list[Problem]]:
    uid = src.uid
    if src.refused is not None:
        raise _Bad(*src.refused)
    label, is_tar = _choose(src)
    if is_tar:
        raw, meta_raw = _read_tar(uid, label, limit)
    else:
        raw, meta_raw = _read_folder(os.path.dirname(label), limit)
    ann_label = f"{label}:{uid}/{ANNOTATION}" if is_tar else label
    if raw is None:
        raise _Bad(ann_label, f"missing {ANNOTATION}: re-run objathor's annotation step for this asset, "
                   "or remove it from the assets directory")
    ann = parse_json(raw, ann_label, limit, check_floats=False)
    if type(ann) is not dict:
        raise _Bad(ann_label, f"must be a JSON object, not {_json_kind(ann)}")
    errors = itertools.islice(schema_validator("annotation").iter_errors(ann), MAX_ERRORS + 1)
    problems = [Problem(uid, ann_label, err.json_path, _short(err.message)) for err in errors]
    if len(problems) > MAX_ERRORS:
        problems[MAX_ERRORS:] = [Problem(uid, ann_label, "$", f"more than {MAX_ERRORS} problems: only the "
                                         "first are listed")]
    if isinstance(ann.get("uid"), str) and ann["uid"] != uid:
        problems.append(Problem(uid, ann_label, "$.uid", f"uid {ann['uid'][:64]!r} differs from its folder "
                                f"name {uid!r}: fix the uid or rename the folder"))
    thor: Any = {}
    meta_label = f"{label}:{uid}/{THOR_METADATA}" if is_tar else os.path.join(os.path.dirname(label),
                                                                              THOR_METADATA)
    if meta_raw is not None:
        try:
            thor = parse_json(meta_raw, meta_label, limit, check_floats=False)
        except _Bad as bad:
            problems.append(Problem(uid, bad.file, "$", bad.message))
        else:
            if type(thor) is not dict:
                problems.append(Problem(uid, meta_label, "$",
                                        f"must be a JSON object, not {_json_kind(thor)}"))
            else:
                thor.pop("objectMetadata", None)
    if problems:
        problems.sort(key=lambda p: (p.file, p.path, p.message))
        return uid, None, problems
    ann["thor_metadata"] = thor
    try:
        body = json.dumps(ann, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:  # a number overflowed to infinity: the checked parse names the file and number
        for data, file in ((raw, ann_label), (meta_raw, meta_label)):
            if data is not None:
                try:
                    parse_json(data, file, limit)
                except _Bad as bad:
                    return uid, None, [Problem(uid, bad.file, "$", bad.message)]
        raise
    return uid, body, []


def _json_kind(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def load_one(src: AssetSource, limit: int = DEFAULT_MAX_SIZE) -> tuple[str, bytes | None, list[Problem]]:
    """Read, check and serialize one asset: (uid, JSON bytes or None, problems).

    Never raises for any input: every failure, even an unexpected one, comes back as a problem
    (so a worker process never dies with a traceback over one asset).
    """
    try:
        return _load(src, limit)
    except _Bad as bad:
        return src.uid, None, [Problem(src.uid, bad.file, "$", bad.message)]
    except Exception as exc:  # noqa: BLE001 - reported as this asset's problem, one line
        where = src.folder or src.tar or src.uid
        return src.uid, None, [Problem(src.uid, where, "$", _short(
            f"unexpected error ({type(exc).__name__}: {exc}): please report it with this file"))]


def load_batch(batch: list[AssetSource], limit: int) -> list[tuple[str, bytes | None, list[Problem]]]:
    return [load_one(src, limit) for src in batch]
