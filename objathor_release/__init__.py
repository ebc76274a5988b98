"""objathor-release: reproducible, verified release tooling for objathor 3D-asset datasets.

The public names below are importable from the package; each lives in the
module of its job (annotations, tarball, manifest, upload, remote, download,
release, config, errors). Importing the package stays light: a name's module
is imported the first time the name is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "prepare_annotations": "annotations",
    "load_annotations": "annotations",
    "DEFAULT_EXCLUDES": "tarball",
    "build_tar": "tarball",
    "write_manifest": "manifest",
    "load_manifest": "manifest",
    "verify_release": "manifest",
    "resolve_target": "s3",
    "make_client": "s3",
    "upload_release": "upload",
    "published_manifest": "remote",
    "verify_remote": "remote",
    "download_version": "download",
    "build_local": "release",
    "publish": "release",
    "ReleaseConfig": "config",
    "UploadConfig": "config",
    "parse_size": "config",
    "validate_version": "config",
    "make_sample_dataset": "sample",
    "LocalS3": "locals3",
    "ReleaseError": "errors",
    "UsageError": "errors",
    "InputError": "errors",
    "ChecksumError": "errors",
    "TransferError": "errors",
    "PublishedError": "errors",
}

__all__ = [
    "__version__",
    "ChecksumError",
    "DEFAULT_EXCLUDES",
    "InputError",
    "LocalS3",
    "PublishedError",
    "ReleaseConfig",
    "ReleaseError",
    "TransferError",
    "UploadConfig",
    "UsageError",
    "build_local",
    "build_tar",
    "download_version",
    "load_annotations",
    "load_manifest",
    "make_client",
    "make_sample_dataset",
    "parse_size",
    "prepare_annotations",
    "publish",
    "published_manifest",
    "resolve_target",
    "upload_release",
    "validate_version",
    "verify_release",
    "verify_remote",
    "write_manifest",
]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and editors
    from .annotations import load_annotations, prepare_annotations
    from .config import ReleaseConfig, UploadConfig, parse_size, validate_version
    from .download import download_version
    from .errors import ChecksumError, InputError, PublishedError, ReleaseError, TransferError, UsageError
    from .locals3 import LocalS3
    from .manifest import load_manifest, verify_release, write_manifest
    from .release import build_local, publish
    from .remote import published_manifest, verify_remote
    from .s3 import make_client, resolve_target
    from .sample import make_sample_dataset
    from .tarball import DEFAULT_EXCLUDES, build_tar
    from .upload import upload_release


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'objathor_release' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
