"""The exclude list and GNU tar's ``--exclude`` matching."""

from __future__ import annotations

import pytest

from objathor_release.build.excludes import DEFAULT_EXCLUDES, compile_excludes, exclude_list
from tests.support.tarball_helpers import SEED_EXCLUDES


def test_the_list_in_force_is_the_defaults_then_each_new_extra() -> None:
    assert list(DEFAULT_EXCLUDES) == SEED_EXCLUDES
    assert exclude_list() == SEED_EXCLUDES
    assert exclude_list(["*.tmp", ".DS_Store", "x", "*.tmp"]) == [*SEED_EXCLUDES, "*.tmp", "x", "*.tmp"]


@pytest.mark.parametrize(("pattern", "path", "hit"), [
    ("*.lock", "assets/u/a.lock", True),
    ("*.lock", "assets/u/.lock", True),
    ("._*", "assets/u/._x", True),
    ("._*", "assets/u/x._y", False),
    ("a*z", "assets/ab/cz", True),  # '*' matches '/', as in GNU tar
    ("b/cz", "assets/ab/cz", False),  # a tail must start after a '/'
    ("ab/cz", "assets/ab/cz", True),
    ("k?", "assets/k2", True),
    ("[!k]eep", "assets/keep", False),
    ("[a-c]x", "assets/bx", True),
    ("\\*x", "assets/*x", True),
    ("\\*x", "assets/ax", False),
    ("[", "assets/[", True),
    ("*/cz", "assets/ab/cz", True),
    ("*/cz", "cz", False),
    ("ab/c*", "assets/ab/cz", True),
    ("b/c*", "assets/ab/cz", False),
    ("uid1", "assets/uid1", True),
    ("uid1", "assets/xuid1", False),
    ("uid1", "uid1", True),
    ("*", "assets/x", True),
    ("x*y", "assets/x/q/y", True),
])
def test_exclude_patterns_match_like_gnu_tar(pattern: str, path: str, hit: bool) -> None:
    assert compile_excludes([pattern])(path) is hit


def test_several_patterns_of_every_shape_combine() -> None:
    excluded = compile_excludes(["uid1", "*.lock", "._*", "a*z", "[ab]x"])
    hits = ["assets/uid1", "assets/u/a.lock", "assets/u/._x", "assets/ab/cz", "assets/bx"]
    # "assets/uid1/x" is no match itself: the walk never enters an excluded folder, as in GNU tar
    misses = ["assets/uid1/x", "assets/uid10", "assets/u/a.locks", "assets/u/x._y", "assets/cx", "assets/u/keep"]
    assert [excluded(p) for p in hits] == [True] * len(hits)
    assert [excluded(p) for p in misses] == [False] * len(misses)
