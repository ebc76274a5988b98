"""Which paths a release tar leaves out: the default list and GNU tar's ``--exclude`` matching."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

#: The seed release process's exclude list, exact and in its order.
DEFAULT_EXCLUDES: tuple[str, ...] = (
    "annotations.json.gz",
    "thor_metadata.json",
    ".DS_Store",
    "._*",
    ".Spotlight-V100",
    ".Trashes",
    ".fseventsd",
    ".VolumeIcon.icns",
    ".apdisk",
    ".TemporaryItems",
    "*.lock",
)


def exclude_list(extra: Iterable[str] = (), *, defaults: bool = True) -> list[str]:
    """The patterns in force: DEFAULT_EXCLUDES (unless ``defaults`` is false, as for a Holodeck
    base folder, whose annotation files are data), then each of ``extra`` not already among them."""
    base = list(DEFAULT_EXCLUDES) if defaults else []
    return base + [p for p in extra if p not in base]


def _translate(pattern: str) -> str:
    """A GNU fnmatch pattern (no flags: ``*`` also matches ``/``, backslash escapes) as a regex."""
    out: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        i += 1
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "\\" and i < n:
            out.append(re.escape(pattern[i]))
            i += 1
        elif c == "[":
            j = i
            if j < n and pattern[j] in "!^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            while j < n and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            if j >= n:  # no closing bracket: a literal '['
                out.append("\\[")
                continue
            body = pattern[i:j]
            i = j + 1
            negate = body[:1] in ("!", "^")
            if negate:
                body = body[1:]
            chars = []
            k = 0
            while k < len(body):
                ch = body[k]
                if ch == "\\" and k + 1 < len(body):
                    k += 1
                    ch = body[k]
                chars.append("\\" + ch if ch in "\\^]-[" else ch)
                if k + 2 < len(body) and body[k + 1] == "-":
                    chars.append("-")
                    k += 1
                k += 1
            out.append(("[^" if negate else "[") + "".join(chars) + "]")
        else:
            out.append(re.escape(c))
    return "".join(out)


_META = frozenset("*?[\\")


def _literal(text: str) -> bool:
    return bool(text) and not _META.intersection(text)


def compile_excludes(patterns: Iterable[str]) -> Callable[[str], bool]:
    """A predicate: is this archive path excluded, matched the way GNU tar's ``--exclude`` does.

    A pattern matches the whole path (``assets/<uid>/x.lock``) or any tail of
    it that starts after a ``/``; for a pattern without ``/`` that is simply a
    file or folder name anywhere in the tree. ``*`` and ``?`` match any
    character, dots and ``/`` included (GNU tar's defaults).

    The usual shapes are tested without a regex (the tar calls this once per
    file): ``NAME`` and ``*SUFFIX`` by the path's ending, ``PREFIX*`` by a
    component's start; anything else by one combined regex.
    """
    ends: list[str] = []  # "/NAME" for a literal, or SUFFIX for *SUFFIX: tested on "/" + path
    starts: list[str] = []  # "/PREFIX" for PREFIX*: tested on "/" + path
    complex_: list[str] = []
    for p in patterns:
        if _literal(p):
            ends.append("/" + p)
        elif p.startswith("*") and _literal(p[1:]) and not p[1:].startswith("/"):
            ends.append(p[1:])
        elif p.endswith("*") and _literal(p[:-1]):
            starts.append("/" + p[:-1])
        else:
            complex_.append(p)
    end_tuple = tuple(ends)
    search = None
    if complex_:
        alternatives = "|".join(_translate(p) for p in complex_)
        search = re.compile("(?:\\A|(?<=/))(?:" + alternatives + ")\\Z", re.DOTALL).search

    def excluded(path: str) -> bool:
        slashed = "/" + path
        if end_tuple and slashed.endswith(end_tuple):
            return True
        if any(s in slashed for s in starts):
            return True
        return search is not None and search(path) is not None

    return excluded
