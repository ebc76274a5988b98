"""A release's inputs: the files each artifact is built from, found the way its builder finds them.

This is the one place that knows them. ``objathor-release release`` hashes them
(paths, sizes, mtimes) to skip the steps that are up to date, and
``objathor-release deps`` writes them as a Make dependency file for ``make
release``, so both rebuild on the same changes: an excluded file such as
``.DS_Store`` rebuilds neither.

- ``assets.tar`` / ``features.tar``: every non-folder entry ``build_tar``
  visits, i.e. below the root with the exclude list applied the way the tar
  applies it (an excluded folder is not entered).
- ``holodeck.tar``: the same for the Holodeck base folder, with only the extra
  patterns (it is built with no default excludes: its annotation files are data).
- ``annotations.json.gz``: what ``prepare_annotations`` reads: each asset
  folder's ``annotations.json.gz`` and ``thor_metadata.json`` and each
  ``<uid>.tar`` at the top level (hidden and ``*.lock`` entries are junk there).

Nothing is opened (a FIFO cannot block the walk) and no symlink is followed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from objathor_release.build.excludes import compile_excludes, exclude_list
from objathor_release.errors import InputError, UsageError
from objathor_release.fsutil import atomic_write

ANNOTATION_FILES = ("annotations.json.gz", "thor_metadata.json")
#: A per-asset archive prepare-annotations reads at the top of the assets directory.
UID_TAR_RE = re.compile(r"^[0-9a-f]{32}\.tar$")


def check_input_dirs(assets_dir: str | Path, features_dir: str | Path | None = None,
                     holodeck_dir: str | Path | None = None) -> None:
    """One line naming the setting when a release's input folder is missing."""
    if not Path(assets_dir).is_dir():
        raise UsageError(f"{assets_dir}: assets directory not found: check ASSETS_DIR / --assets-dir")
    if features_dir and not Path(features_dir).is_dir():
        raise UsageError(f"{features_dir}: features directory not found: check FEATURES_DIR")
    if holodeck_dir and not Path(holodeck_dir).is_dir():
        raise UsageError(f"{holodeck_dir}: Holodeck base folder not found: check HOLODECK_DIR / "
                         "--holodeck-dir")


def walk(root: Path, prune: Callable[[str], bool] | None = None) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry below ``root`` but folders as (relative path, lstat), in sorted order.

    A folder for which ``prune(relative path)`` is true is not entered. A
    folder that cannot be read, or vanishes or changes during the walk, raises
    InputError naming it.
    """
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        folder = root / rel_dir if rel_dir else root
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name, reverse=True)
        except OSError as exc:
            raise walk_error(folder, exc) from None
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
                st = None if is_dir else entry.stat(follow_symlinks=False)
            except OSError as exc:
                raise walk_error(Path(entry.path), exc) from None
            if st is None:
                if prune is None or not prune(rel):
                    stack.append(rel)
            else:
                yield rel, st


def walk_error(path: Path, exc: OSError) -> InputError:
    """The one-line error for a folder the walk cannot read."""
    if isinstance(exc, FileNotFoundError):
        how = "vanished while it was being read"
    elif isinstance(exc, NotADirectoryError):
        how = "was replaced by a file while it was being read"
    else:
        how = f"cannot be read ({exc.strerror})"
    return InputError(f"{path}: {how}: fix its permissions, or stop whatever changes the tree, and run again")


def _line(rel: str, st: os.stat_result) -> bytes:
    return f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_mode}\n".encode(errors="surrogateescape")


def _settings_hash(settings: Iterable[object]) -> hashlib._Hash:
    return hashlib.sha256(json.dumps([str(s) for s in settings]).encode())


def fingerprints(root: Path, *selections: tuple[Callable[[str], bool], tuple[object, ...]]) -> list[str]:
    """For each (keep, settings): a hash of the settings and of the paths, sizes and mtimes of the
    files under ``root`` that ``keep`` accepts. One walk of the tree serves every selection."""
    hashes = [_settings_hash(settings) for _, settings in selections]
    for rel, st in walk(root):
        line = _line(rel, st)
        for (keep, _), h in zip(selections, hashes, strict=True):
            if keep(rel):
                h.update(line)
    return [h.hexdigest() for h in hashes]


def fingerprint(root: Path, keep: Callable[[str], bool], *settings: object) -> str:
    """``fingerprints`` for one selection."""
    return fingerprints(root, (keep, settings))[0]


# --------------------------------------------------------------------------- what each builder reads


def is_annotation_input(rel: str) -> bool:
    """Whether prepare-annotations reads ``ASSETS_DIR/rel``."""
    top, _, rest = rel.partition("/")
    if top.startswith(".") or top.endswith(".lock"):
        return False
    if not rest:
        return UID_TAR_RE.match(top) is not None
    return rest in ANNOTATION_FILES


def tar_pruner(root: Path, excludes: Iterable[str] = (), *, defaults: bool = True) -> Callable[[str], bool]:
    """Whether ``build_tar(root, extra_excludes=excludes, default_excludes=defaults)`` leaves out the
    entry at ``rel``.

    The tar names every member after the root folder's name, so the patterns
    are matched against ``NAME/rel`` as there.
    """
    excluded = compile_excludes(exclude_list(excludes, defaults=defaults))
    top = Path(os.path.abspath(root)).name
    return lambda rel: excluded(f"{top}/{rel}")


@dataclass(frozen=True)
class Input:
    """One file an artifact is built from: its path as the caller named the root, and its lstat."""

    rel: str
    path: Path
    stat: os.stat_result


@dataclass
class ReleaseInputs:
    """Each artifact's input files, in the walk's order (which the fingerprints hash), and the
    folders whose listing decides them."""

    artifacts: dict[str, list[Input]] = field(default_factory=dict)
    folders: list[Path] = field(default_factory=list)

    def fingerprint(self, artifact: str, *settings: object) -> str:
        """A hash of ``settings`` and of the artifact's inputs' paths, sizes, mtimes and modes."""
        h = _settings_hash(settings)
        for item in self.artifacts[artifact]:
            h.update(_line(item.rel, item.stat))
        return h.hexdigest()


def _walk_tree(root: Path, skip: Callable[[str], bool], out: ReleaseInputs,
               pruned: list[str]) -> list[Input]:
    """Every file the tar's walk of ``root`` meets (excluded files included: the caller filters); the
    folders it enters go to ``out.folders``, the excluded ones it leaves alone to ``pruned``."""
    out.folders.append(root)

    def prune(rel: str) -> bool:
        if skip(rel):
            pruned.append(rel)
            return True
        out.folders.append(root / rel)
        return False

    return [Input(rel, root / rel, st) for rel, st in walk(root, prune)]


def release_inputs(assets_dir: str | Path, features_dir: str | Path | None = None,
                   excludes: Iterable[str] = (), holodeck_dir: str | Path | None = None) -> ReleaseInputs:
    """The inputs of annotations.json.gz and assets.tar (from ``assets_dir``), with
    ``features_dir`` of features.tar, with ``excludes`` added to the default exclude list, and with
    ``holodeck_dir`` of holodeck.tar (``excludes`` only)."""
    excludes = list(excludes)
    assets = Path(assets_dir)
    out = ReleaseInputs()
    skip = tar_pruner(assets, excludes)
    pruned: list[str] = []
    entries = _walk_tree(assets, skip, out, pruned)
    out.artifacts["assets.tar"] = [i for i in entries if not skip(i.rel)]
    annotations = [i for i in entries if is_annotation_input(i.rel)]
    # An asset folder the tar leaves out is still read by prepare-annotations.
    for folder in pruned:
        for name in ANNOTATION_FILES:
            rel = f"{folder}/{name}"
            if not is_annotation_input(rel):
                continue
            try:
                st = os.lstat(assets / rel)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise walk_error(assets / rel, exc) from None
            annotations.append(Input(rel, assets / rel, st))
    out.artifacts["annotations.json.gz"] = annotations
    if features_dir:
        features = Path(features_dir)
        fskip = tar_pruner(features, excludes)
        out.artifacts["features.tar"] = [i for i in _walk_tree(features, fskip, out, []) if not fskip(i.rel)]
    if holodeck_dir:
        holodeck = Path(holodeck_dir)
        hskip = tar_pruner(holodeck, excludes, defaults=False)
        out.artifacts["holodeck.tar"] = [i for i in _walk_tree(holodeck, hskip, out, []) if not hskip(i.rel)]
    out.folders.sort()
    return out


# --------------------------------------------------------------------------- as a Make dependency file

#: Characters GNU make cannot carry in a file name in a rule (a recipe, an assignment, a pattern,
#: an order-only bar, an archive member, a separator), and a trailing backslash.
_UNNAMEABLE = re.compile(r"[;=%|()\t\n\r]|\\\Z")
_ESCAPED = re.compile(r"(\\*)([ #:*?\[\]])")
#: A prerequisite that is never a file: an artifact with an input make cannot name is always rebuilt.
ALWAYS = "objathor-release-unnameable-input"
DEPS_HEADER = "# Generated by objathor-release deps: the input files of each artifact (do not edit).\n"


def make_name(path: str) -> str | None:
    """``path`` spelled for a Make rule (spaces, ``#``, ``:``, wildcards escaped, ``$`` doubled), or
    None when make cannot name it."""
    if _UNNAMEABLE.search(path):
        return None
    return _ESCAPED.sub(lambda m: m.group(1) * 2 + "\\" + m.group(2), path).replace("$", "$$")


#: The file a sharded assets.tar is made as (``make release SHARD_SIZE=...``): the shards have no fixed
#: names before they are planned, so Make tracks this stamp, which the Makefile touches after them.
SHARDS_STAMP = ".assets.shards"


def stamp_path(release_dir: str, artifact: str) -> str:
    """The file holding the list of an artifact's inputs, rewritten only when the list changes."""
    return f"{release_dir}/.{artifact}.inputs"


@dataclass
class MakeDeps:
    """What ``write_make_deps`` wrote: the dependency file and each artifact's input count."""

    output: Path
    counts: dict[str, int]
    unnameable: list[str]

    def summary(self) -> str:
        listed = ", ".join(f"{name} {n}" for name, n in self.counts.items())
        return f"wrote {self.output}: input files of {listed}"


def _rule(target: str, prerequisites: Iterable[str]) -> str:
    return "".join([target, ":", *(f" \\\n  {p}" for p in prerequisites), "\n"])


def _assignment(name: str, value: str) -> str:
    if "\n" in value:
        raise InputError(f"{name}: a newline cannot be passed to make: change the value")
    escaped = value.replace("$", "$$").replace("#", "\\#")
    return f"{name} := {escaped}\n"


def _write_if_changed(path: Path, data: bytes) -> None:
    try:
        if path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise walk_error(path, exc) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_make_deps(inputs: ReleaseInputs, release_dir: str, output: str | Path, *,
                    settings: dict[str, dict[str, str]] | None = None,
                    variables: dict[str, str] | None = None) -> MakeDeps:
    """Write ``output``: for each artifact ``RELEASE_DIR/NAME`` a rule whose prerequisites are its
    input files and its input list, an empty rule for each input (a deleted one does not stop make),
    and ``output`` itself depending on every folder walked (a new file is seen).

    The input list (``RELEASE_DIR/.NAME.inputs``, the paths and ``settings[NAME]``) is rewritten
    only when it changes, so a deleted or added input, or a changed setting, rebuilds the artifact
    while a new excluded file (which also touches its folder) does not. ``variables`` become
    ``NAME := value`` lines, for the includer to see what the file was made with.
    """
    target_dir = make_name(release_dir)
    out_name = make_name(str(output))
    if target_dir is None or out_name is None:
        raise InputError(f"{release_dir if target_dir is None else output}: make cannot name this path "
                         "(it holds one of ; = % | ( ) a tab or a newline): choose another")
    settings = settings or {}
    unnameable: list[str] = []
    rules: list[str] = []
    empty: dict[str, None] = {}
    for artifact, files in inputs.artifacts.items():
        stamp = stamp_path(release_dir, artifact)
        listing = [f"{k}={v}" for k, v in sorted(settings.get(artifact, {}).items())]
        listing += [item.rel for item in files]
        _write_if_changed(Path(stamp), ("\n".join(listing) + "\n").encode(errors="surrogateescape"))
        prerequisites = [make_name(stamp) or ALWAYS]
        for item in files:
            name = make_name(str(item.path))
            if name is None:
                unnameable.append(str(item.path))
                name = ALWAYS
            else:
                empty[name] = None
            prerequisites.append(name)
        targets = f"{target_dir}/{artifact}"
        if artifact == "assets.tar":  # the same inputs, when it is built as shards
            targets += f" {target_dir}/{SHARDS_STAMP}"
        rules.append(_rule(targets, dict.fromkeys(prerequisites)))
    folders = [n for n in (make_name(str(f)) for f in inputs.folders) if n is not None]
    text = "".join([
        DEPS_HEADER,
        *(_assignment(k, v) for k, v in (variables or {}).items()),
        *rules, _rule(out_name, folders),
        f".PHONY: {ALWAYS}\n" if unnameable else "",
        *(f"{name}:\n" for name in empty),
    ])
    with atomic_write(output) as fh:
        fh.write(text.encode(errors="surrogateescape"))
    return MakeDeps(Path(output), {a: len(f) for a, f in inputs.artifacts.items()}, unnameable)
