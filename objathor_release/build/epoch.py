"""SOURCE_DATE_EPOCH: the one timestamp a reproducible build writes (tar mtimes, the manifest, the image).

See https://reproducible-builds.org/specs/source-date-epoch/. Every reader goes
through :func:`source_date_epoch` (or :func:`from_environment` where "unset"
means something different from 0), so a bad value gets the same error
everywhere.
"""

from __future__ import annotations

import os

from objathor_release.errors import UsageError

VARIABLE = "SOURCE_DATE_EPOCH"
#: The first value past what a tar header's 11 octal mtime digits hold (year 6325).
LIMIT = 8**11


def _bad(value: object) -> UsageError:
    return UsageError(
        f"{VARIABLE}={value!r} is not a whole number of seconds since 1970 from 0 to {LIMIT - 1}: "
        f"set e.g. {VARIABLE}=1700000000, or unset it for 0"
    )


def _checked(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < LIMIT:
        raise _bad(value)
    return value


def from_environment() -> int | None:
    """``$SOURCE_DATE_EPOCH`` checked, or None when it is unset or blank; UsageError when it is bad."""
    text = os.environ.get(VARIABLE, "").strip()
    if not text:
        return None
    if not text.isascii() or not text.isdigit() or len(text) > 20 or int(text) >= LIMIT:
        raise _bad(text)
    return int(text)


def source_date_epoch(value: int | None = None) -> int:
    """``value`` if given, else ``$SOURCE_DATE_EPOCH``, else 0; UsageError unless it fits a tar header."""
    if value is not None:
        return _checked(value)
    got = from_environment()
    return 0 if got is None else got
