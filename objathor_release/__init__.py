"""objathor-release: reproducible, verified release tooling for objathor 3D-asset datasets.

The public names below are importable from the package; each lives in the
module of its job (build/, publish/, fetch/, trust/, pipeline, settings,
errors). Importing the package stays light: a name's module is imported the
first time the name is used, so the CLI starts fast.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from ._version import __version__

logging.getLogger(__name__).addHandler(logging.NullHandler())  # silent unless the caller sets up logging

# public name -> the module that defines it; __all__ is derived from this table.
_EXPORTS = {
    "prepare_annotations": "build.annotations",
    "load_annotations": "build.annotations",
    "DEFAULT_EXCLUDES": "build.excludes",
    "build_tar": "build.tarball",
    "write_manifest": "build.manifest",
    "load_manifest": "build.manifest",
    "verify_release": "build.manifest",
    "resolve_target": "s3.target",
    "make_client": "publish.client",
    "upload_release": "publish.upload",
    "published_manifest": "publish.remote",
    "verify_remote": "publish.remote",
    "download_version": "fetch.download",
    "TrustPolicy": "trust.origin",
    "sign_release": "trust.origin",
    "keygen": "trust.signing",
    "load_registry": "trust.registry",
    "build_local": "pipeline",
    "publish": "pipeline",
    "ReleaseConfig": "settings",
    "UploadConfig": "settings",
    "parse_size": "settings",
    "validate_version": "settings",
    "ReleaseError": "errors",
    "UsageError": "errors",
    "InputError": "errors",
    "ChecksumError": "errors",
    "TransferError": "errors",
    "PublishedError": "errors",
    "DiskFullError": "errors",
    "OriginError": "errors",
}

__all__ = ["__version__", *sorted(_EXPORTS)]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and editors
    from .build.annotations import load_annotations, prepare_annotations
    from .build.excludes import DEFAULT_EXCLUDES
    from .build.manifest import load_manifest, verify_release, write_manifest
    from .build.tarball import build_tar
    from .errors import (
        ChecksumError,
        DiskFullError,
        InputError,
        OriginError,
        PublishedError,
        ReleaseError,
        TransferError,
        UsageError,
    )
    from .fetch.download import download_version
    from .pipeline import build_local, publish
    from .publish.client import make_client
    from .publish.remote import published_manifest, verify_remote
    from .publish.upload import upload_release
    from .s3.target import resolve_target
    from .settings import ReleaseConfig, UploadConfig, parse_size, validate_version
    from .trust.origin import TrustPolicy, sign_release
    from .trust.registry import load_registry
    from .trust.signing import keygen


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'objathor_release' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
