"""What every CLI module shares: the program name, the runner type, environment defaults, and the
hints spelled for make."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable

PROG = "objathor-release"

Runner = Callable[[argparse.Namespace], int]


def env(name: str) -> str | None:
    """The environment variable's value, or None when it is unset or empty."""
    value = os.environ.get(name)
    return value if value else None


#: flags of the other commands the Makefile passes a variable to (the release's come from settings)
_MAKE_FLAGS = {"--save-dir": "ASSETS_DIR", "--output-file": "RELEASE_DIR", "--path": "DOWNLOAD_PATH",
               "--base-url": "BASE_URL"}
_SWITCHES = frozenset({"--force", "--dry-run"})  # flags without a value: VAR=1
_HINT_FLAG = re.compile(r"\b(pass|check|with|and|or|use|give) (--[a-z][a-z0-9-]*)(?![\w-])")


def under_make() -> bool:
    """True when the Makefile runs this command (it exports OBJATHOR_UNDER_MAKE=1)."""
    return os.environ.get("OBJATHOR_UNDER_MAKE") == "1"


def make_hints(message: str) -> str:
    """``message`` with the flags its hints name (``pass --force``, ``check --bucket``) spelled as
    the Make variables that set them (``pass FORCE=1``, ``check BUCKET=...``), for a command make
    runs. A message that already names the Make variable (``(make: BUCKET=...)``) stays as it is,
    and so does a flag that is the subject of the message (``--chunk-size 1M is out of range``)."""
    if "make:" in message:
        return message
    from objathor_release.settings import RUN_OPTIONS, ReleaseConfig

    variables = {s.flag: s.make for s in ReleaseConfig.settings().values() if s.flag and s.make}
    variables |= {o.flag: o.make for o in RUN_OPTIONS if o.make}
    variables |= _MAKE_FLAGS

    def spell(m: re.Match[str]) -> str:
        word, flag = m.group(1), m.group(2)
        var = variables.get(flag)
        if var is None:
            return m.group(0)
        return f"{word} {var}=1" if flag in _SWITCHES else f"{word} {var}=..."
    return _HINT_FLAG.sub(spell, message)
