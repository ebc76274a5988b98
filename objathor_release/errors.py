"""Named exceptions for user-facing failures.

Every message is one line that names the file, uid or field at fault and says
what to do next. The CLI prints ``objathor-release: error: <message>`` and exits
with ``exit_code`` (2 for bad input or settings, 1 for failures of the outside
world such as the network or a server), never with a stack trace.
"""

from __future__ import annotations


class ReleaseError(Exception):
    """Base class: an error the user can act on. Exit code 1."""

    exit_code = 1


class UsageError(ReleaseError):
    """Bad arguments, settings or configuration (fix the command line or config)."""

    exit_code = 2


class InputError(ReleaseError):
    """Bad input data: an asset tree, annotation, archive or manifest that is wrong."""

    exit_code = 2


class ChecksumError(ReleaseError):
    """Bytes on disk or on a server do not match the manifest."""

    exit_code = 1


class TransferError(ReleaseError):
    """An upload or download failed after its retries; the run can be resumed."""

    exit_code = 1


class PublishedError(ReleaseError):
    """Refused to overwrite something already published without --force."""

    exit_code = 3


class DiskFullError(TransferError):
    """The disk filled up while writing; the message names the path and the space needed."""


class OriginError(ChecksumError):
    """A manifest is not the one its publisher released: a registry pin or a signature does not match,
    or a required signature is missing. Exit code 1."""
