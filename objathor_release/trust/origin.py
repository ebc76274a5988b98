"""Origin, not only integrity: is this manifest.json the one its publisher released?

The manifest's checksums prove that the downloaded bytes are the ones the
manifest lists; they say nothing about who wrote the manifest, since the same
server serves both. Two checks close that gap, both on the exact bytes of the
manifest before it is parsed:

- the registry pin (:mod:`.registry`): a version listed in the package's
  manifests.txt must come with a manifest of exactly that sha256;
- the signature: ``manifest.json.sig`` beside manifest.json, an Ed25519
  signature (:mod:`.signing`) that must verify with a trusted key (the
  package's trusted_keys.txt and ``--trusted-key``). A 404 means unsigned; any
  other failure to fetch it is an error, never "unsigned".

``require_signature`` refuses unsigned versions and signatures that no trusted
key can check. On the publishing side :func:`sign_release` writes the
signature with the key in ``$OBJATHOR_SIGNING_KEY``.

This module is policy and checks on bytes it is given; fetching manifest.json
and its signature from a server is :mod:`objathor_release.fetch.origin`'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from objathor_release.build.manifest import SIGNATURE as SIGNATURE_NAME
from objathor_release.errors import OriginError
from objathor_release.fsutil import atomic_write
from objathor_release.trust.registry import Registry, load_registry, package_trusted_keys
from objathor_release.trust.signing import (
    SIGNATURE_SIZE,
    SIGNING_KEY_ENV,
    KeyId,
    load_signing_key,
    load_trusted_key,
    verify_manifest_signature,
)

SIGNATURE_LIMIT = 4096
_REPORT = "do not use this copy; report it to the publisher"


@dataclass(frozen=True)
class OriginResult:
    """What was established about a manifest's origin. Only true statements end up in ``notes``."""

    version: str
    manifest_sha256: str | None
    pinned: bool  # the registry lists the version and the manifest matched it
    signature: str  # "good", "unsigned", "not checked" (no trusted key, or not asked)
    key: KeyId | None = None

    def notes(self) -> list[str]:
        out = []
        if self.pinned and self.manifest_sha256:
            out.append(f"manifest: sha256:{self.manifest_sha256[:12]}... matches the registry's pin for "
                       f"{self.version}")
        if self.signature == "good" and self.key is not None:
            out.append(f"signature: good (key {self.key.fingerprint})")
        elif self.signature == "unsigned":
            out.append(f"signature: none (version {self.version} is not signed; its origin is not checked)")
        return out


@dataclass(frozen=True)
class TrustPolicy:
    """The keys and pins a download checks against, loaded (and validated) before any request."""

    trusted_keys: tuple[KeyId, ...] = ()
    require_signature: bool = False
    registry: Registry | None = None

    @classmethod
    def load(cls, trusted_keys: Iterable[str] = (), require_signature: bool = False, *,
             registry: str | Path | None = None, keys_file: str | Path | None = None) -> TrustPolicy:
        """``--trusted-key`` values (base64 or files) plus trusted_keys.txt, and the manifest registry."""
        keys = [load_trusted_key(arg, i) for i, arg in enumerate(trusted_keys, 1)]
        keys += [k for k in package_trusted_keys(keys_file) if k not in keys]
        return cls(tuple(dict.fromkeys(keys)), require_signature, load_registry(registry))


def signature_url(manifest_url: str) -> str:
    return manifest_url.rsplit("/", 1)[0] + "/" + SIGNATURE_NAME


def _check_pin(version: str, data: bytes | None, digest: str | None, url: str,
               registry: Registry) -> bool:
    want = registry.pinned(version)
    if want is None:
        return False
    if data is None:
        raise OriginError(f"{url} is missing, but version {version} was published with a manifest.json "
                          f"(the registry {registry.path} pins sha256:{want}): {_REPORT}")
    if digest != want:
        raise OriginError(f"the manifest served at {url} is not the one published for {version}: its sha256 "
                          f"is {digest}, the registry {registry.path} pins {want}: {_REPORT}")
    return True


def check_manifest_origin(version: str, data: bytes | None, sig: bytes | None, *,
                          trusted_keys: Sequence[KeyId] = (), require_signature: bool = False,
                          url: str = "manifest.json", registry: Registry | str | Path | None = None,
                          ) -> OriginResult:
    """Check the exact manifest bytes ``data`` (None: the version has no manifest) and its signature
    ``sig`` (None: unsigned) against the registry and the trusted keys; OriginError if they fail."""
    reg = registry if isinstance(registry, Registry) else load_registry(registry)
    digest = hashlib.sha256(data).hexdigest() if data is not None else None
    pinned = _check_pin(version, data, digest, url, reg)
    sig_url = signature_url(url)
    if data is None:
        if require_signature:
            raise OriginError(f"version {version} has no manifest.json at {url}, so nothing of it is signed, "
                              "and --require-signature was given")
        return OriginResult(version, None, pinned, "unsigned" if trusted_keys else "not checked")
    if sig is None:
        if require_signature:
            raise OriginError(f"version {version} is not signed ({sig_url} was not found) and "
                              "--require-signature was given: ask its publisher for a signed release")
        return OriginResult(version, digest, pinned, "unsigned" if trusted_keys else "not checked")
    if not trusted_keys:
        if require_signature:
            raise OriginError(f"version {version} is signed, but no trusted key was given to check "
                              f"{sig_url}, and --require-signature was given: pass --trusted-key with the "
                              "publisher's public key")
        return OriginResult(version, digest, pinned, "not checked")
    key = verify_manifest_signature(data, sig, trusted_keys)
    if key is None:
        what = "does not verify with" if len(sig) == SIGNATURE_SIZE else \
            f"is {len(sig)} bytes, not a 64-byte Ed25519 signature, so it cannot match"
        tried = ", ".join(k.fingerprint for k in trusted_keys)
        raise OriginError(f"the signature {sig_url} of version {version}'s manifest {what} any trusted key "
                          f"({tried}): the manifest or its signature was changed after signing, or another "
                          f"key signed it; {_REPORT}")
    return OriginResult(version, digest, pinned, "good", key)


# --------------------------------------------------------------------------- publishing


@dataclass(frozen=True)
class SignResult:
    """What :func:`sign_release` did; ``message`` is the one line to show."""

    path: Path
    key: KeyId | None
    removed_stale: bool = False

    @property
    def message(self) -> str:
        if self.key is not None:
            return f"{self.path}: signed manifest.json with key {self.key.fingerprint}"
        text = f"{self.path.parent / 'manifest.json'}: not signed (${SIGNING_KEY_ENV} is not set)"
        if self.removed_stale:
            text += f"; removed the earlier {SIGNATURE_NAME}, which may not match this manifest"
        return text


def sign_release(release_dir: str | Path, environ: Mapping[str, str] | None = None) -> SignResult:
    """Write RELEASE_DIR/manifest.json.sig with the key in ``$OBJATHOR_SIGNING_KEY`` (atomically).

    Without a key nothing is signed and a signature left by an earlier run is
    removed: it was made for some manifest, not necessarily this one.
    """
    env = os.environ if environ is None else environ
    rdir = Path(release_dir)
    sig_path = rdir / SIGNATURE_NAME
    text = env.get(SIGNING_KEY_ENV, "")
    if not text.strip():
        removed = sig_path.exists()
        with contextlib.suppress(FileNotFoundError):
            sig_path.unlink()
        return SignResult(sig_path, None, removed)
    signer = load_signing_key(text)
    data = (rdir / "manifest.json").read_bytes()
    with atomic_write(sig_path) as fh:
        fh.write(signer.sign(data))
    return SignResult(sig_path, signer.key_id)
