"""objathor-release: reproducible, verified release tooling for objathor 3D-asset datasets."""

from __future__ import annotations

from .config import ReleaseConfig, UploadConfig, parse_size, validate_version
from .errors import (
    ChecksumError,
    InputError,
    PublishedError,
    ReleaseError,
    TransferError,
    UsageError,
)
from .sample import make_sample_dataset

__version__ = "0.1.0"

__all__ = [
    "ChecksumError",
    "InputError",
    "PublishedError",
    "ReleaseConfig",
    "ReleaseError",
    "TransferError",
    "UploadConfig",
    "UsageError",
    "__version__",
    "make_sample_dataset",
    "parse_size",
    "validate_version",
]
