"""Ed25519 keys and signatures of a release's exact manifest.json bytes.

Formats (all plain text but the signature):

- private key (``OBJATHOR_SIGNING_KEY``): an unencrypted PEM ``PRIVATE KEY``
  block, as ``keygen`` and ``openssl genpkey -algorithm ed25519`` write it, or
  base64 of the raw 32-byte Ed25519 private key (one line), or base64 of 64
  bytes (private key then public key, the NaCl/libsodium layout; the public
  half must match).
- public key (``--trusted-key``, ``trusted_keys.txt``, ``keygen``'s ``FILE.pub``):
  base64 of the raw 32-byte public key, or a PEM ``PUBLIC KEY`` block in a file.
- signature (``manifest.json.sig``): the raw 64-byte Ed25519 signature of the
  manifest.json bytes, as ``openssl pkeyutl -sign -rawin`` writes it.

A key is named by its fingerprint: the first 16 hex digits of the sha256 of the
raw public key. Private key material never appears in a message, an exception
or a ``repr``: errors say what is wrong with a key, never what it is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from objathor_release.errors import UsageError
from objathor_release.fsutil import atomic_write, temp_path_for

SIGNING_KEY_ENV = "OBJATHOR_SIGNING_KEY"
SIGNATURE_SIZE = 64
KEY_SIZE = 32
KEY_FILE_LIMIT = 64 * 1024
_PEM = "-----BEGIN "
_PRIVATE_FORMAT = ("expected an unencrypted PEM PRIVATE KEY block as 'objathor-release keygen' writes it, "
                   "or base64 of the raw 32-byte key")


@dataclass(frozen=True)
class KeyId:
    """A trusted Ed25519 public key."""

    raw: bytes

    @property
    def public_key(self) -> str:
        """base64 of the raw 32-byte public key (the form ``--trusted-key`` takes)."""
        return base64.b64encode(self.raw).decode()

    @property
    def fingerprint(self) -> str:
        """The short name used in messages: 16 hex digits of the key's sha256."""
        return hashlib.sha256(self.raw).hexdigest()[:16]

    def __str__(self) -> str:
        return self.fingerprint


class SigningKey:
    """A loaded private key. Its ``repr`` names only the public key's fingerprint."""

    __slots__ = ("_key", "key_id")

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key
        self.key_id = KeyId(key.public_key().public_bytes(serialization.Encoding.Raw,
                                                          serialization.PublicFormat.Raw))

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def __repr__(self) -> str:
        return f"SigningKey(public key {self.key_id.fingerprint})"

    def __reduce__(self) -> None:  # type: ignore[override]
        raise TypeError("a SigningKey cannot be pickled or copied")


def _b64(text: str) -> bytes | None:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return None


def _private_problem(text: str) -> tuple[Ed25519PrivateKey | None, str]:
    """The key in ``text``, or None and what is wrong with it (never the key itself)."""
    if text.lstrip().startswith(_PEM):
        try:
            key = serialization.load_pem_private_key(text.strip().encode(), password=None)
        except TypeError:
            return None, "the PEM key is encrypted"
        except (ValueError, UnsupportedAlgorithm):
            return None, "the PEM block cannot be read"
        if not isinstance(key, Ed25519PrivateKey):
            return None, f"the PEM key is {type(key).__name__.removeprefix('_')}, not Ed25519"
        return key, ""
    raw = _b64(text)
    if raw is None:
        return None, "not base64"
    if len(raw) not in (KEY_SIZE, 2 * KEY_SIZE):
        return None, f"it decodes to {len(raw)} bytes, not 32"
    key = Ed25519PrivateKey.from_private_bytes(raw[:KEY_SIZE])
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if len(raw) == 2 * KEY_SIZE and raw[KEY_SIZE:] != public:
        return None, "its 64 bytes are not a private key followed by its own public key"
    return key, ""


def load_signing_key(text: str, source: str = SIGNING_KEY_ENV) -> SigningKey:
    """Parse a private key (see the module docstring); UsageError naming ``source`` if malformed."""
    key, problem = _private_problem(text)
    if key is None:
        raise UsageError(f"{source} is not a valid Ed25519 private key ({problem}): {_PRIVATE_FORMAT}; "
                         "'objathor-release keygen --output FILE' makes one")
    return SigningKey(key)


def sign_manifest(data: bytes, key: str | SigningKey) -> bytes:
    """The 64-byte Ed25519 signature of ``data`` (the exact manifest.json bytes)."""
    signer = key if isinstance(key, SigningKey) else load_signing_key(key)
    return signer.sign(data)


def _public_problem(text: str) -> tuple[KeyId | None, str]:
    stripped = text.strip()
    if stripped.startswith(_PEM):
        if "PRIVATE KEY" in stripped.split("\n", 1)[0]:
            return None, ("it holds a PRIVATE key: pass the public key (keygen's FILE.pub) and keep the "
                          "private one secret")
        try:
            key = serialization.load_pem_public_key(stripped.encode())
        except (ValueError, UnsupportedAlgorithm):
            return None, "its PEM block cannot be read"
        if not isinstance(key, Ed25519PublicKey):
            return None, "its PEM key is not an Ed25519 key"
        return KeyId(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)), ""
    raw = _b64(stripped)
    if raw is None:
        return None, "it is not base64"
    if len(raw) != KEY_SIZE:
        return None, f"it decodes to {len(raw)} bytes, not the 32 of an Ed25519 public key"
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        return None, "it is not a valid Ed25519 public key"
    return KeyId(raw), ""


def parse_public_key(text: str, source: str) -> KeyId:
    """A public key from its text (base64 raw or PEM); UsageError naming ``source`` if malformed."""
    key, problem = _public_problem(text)
    if key is None:
        raise UsageError(f"{source}: not an Ed25519 public key ({problem}): pass base64 of the raw 32-byte "
                         "key that 'objathor-release keygen' prints, or the path of its .pub file")
    return key


def read_key_file(path: Path, source: str) -> str:
    """The text of a small key file; a FIFO, a folder or a huge file is refused with one line."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise UsageError(f"{source}: cannot be read ({exc.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UsageError(f"{source}: not a regular file")
        data = os.read(fd, KEY_FILE_LIMIT + 1)
    finally:
        os.close(fd)
    if len(data) > KEY_FILE_LIMIT:
        raise UsageError(f"{source}: larger than {KEY_FILE_LIMIT} bytes, not a key file")
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        raise UsageError(f"{source}: not a text key file (not ASCII)") from None


def load_trusted_key(arg: str, index: int = 1) -> KeyId:
    """``--trusted-key ARG``: base64 of a raw public key, or the path of a file holding one.

    A value that is not a file is never echoed back (a private key pasted by
    mistake must not land in a terminal log); it is named by its position.
    """
    path = Path(arg)
    if arg and path.exists():
        source = f"--trusted-key {arg}"
        text = read_key_file(path, source)
        lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        return parse_public_key(text if text.lstrip().startswith(_PEM) else (lines[0] if lines else ""),
                                source)
    return parse_public_key(arg, f"--trusted-key number {index} (not a file)")


def verify_manifest_signature(data: bytes, sig: bytes, keys: Iterable[KeyId]) -> KeyId | None:
    """The trusted key whose signature of ``data`` is ``sig``, or None when none verifies."""
    if len(sig) != SIGNATURE_SIZE:
        return None
    for key in keys:
        try:
            Ed25519PublicKey.from_public_bytes(key.raw).verify(sig, data)
        except InvalidSignature:
            continue
        return key
    return None


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a 0600 temporary beside ``path`` (never readable by others), then rename."""
    tmp = temp_path_for(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def keygen(output: str | Path, *, force: bool = False) -> KeyId:
    """Make a key pair: ``output`` gets the private key as PEM (mode 0600), ``output.pub`` the public key
    as base64 of its 32 raw bytes (what ``--trusted-key`` and trusted_keys.txt take)."""
    path = Path(output)
    pub = path.with_name(path.name + ".pub")
    for target in (path, pub):
        if (target.exists() or target.is_symlink()) and not force:
            raise UsageError(f"{target} already exists: pass --force to replace it (a replaced private key "
                             "can no longer sign, and its public key stays trusted wherever it was added)")
    if not path.parent.is_dir():
        raise UsageError(f"{path.parent}: no such directory for --output")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    signer = SigningKey(key)
    try:
        _write_private(path, pem)
        with atomic_write(pub) as fh:
            fh.write((signer.key_id.public_key + "\n").encode())
    except OSError as exc:
        raise UsageError(f"{exc.filename or path}: cannot be written ({exc.strerror})") from None
    return signer.key_id
