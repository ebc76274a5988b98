"""What every CLI module shares: the program name, the runner type, environment defaults."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

PROG = "objathor-release"

Runner = Callable[[argparse.Namespace], int]


def env(name: str) -> str | None:
    """The environment variable's value, or None when it is unset or empty."""
    value = os.environ.get(name)
    return value if value else None
