"""Origin checks: the manifest registry, Ed25519 signatures, publish signing and signed downloads.

Codec and registry cases are unit tests of small parsers; publishing talks to the
real moto server (tests/conftest.py) and downloads come from the real nginx
(tests/fixtures_web.py), faults through tests/faultproxy.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import stat
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from devtools.nginx import Nginx
from devtools.sample import make_sample_dataset
from devtools.served_release import Release, build_release
from objathor_release.errors import InputError, OriginError, PublishedError, TransferError, UsageError
from objathor_release.fetch.download import download_version
from objathor_release.fetch.http import HttpConfig
from objathor_release.trust.origin import check_manifest_origin, sign_release
from objathor_release.trust.registry import (
    add_pin,
    load_registry,
    manifest_file_sha256,
    package_trusted_keys,
    parse_registry,
    pinned_sha256,
)
from objathor_release.trust.signing import (
    KeyId,
    load_signing_key,
    load_trusted_key,
    parse_public_key,
    sign_manifest,
    verify_manifest_signature,
)
from tests.conftest import run_cli
from tests.support.faultproxy import PASS, FaultProxy, Request, status
from tests.support.fixtures_upload import make_release, random_bytes, tar_bytes

V = "2024_02_01"
FAST = HttpConfig(attempts=2, backoff=0.01, connections=2, part_size=1024 * 1024, read_size=256 * 1024)
QUIET = {"OBJATHOR_PROGRESS": "0", "OBJATHOR_DOWNLOAD_BACKOFF": "0.01", "OBJATHOR_DOWNLOAD_ATTEMPTS": "2"}
SHA_A = "a" * 64
SHA_B = "b" * 64


def raw_private(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def raw_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def new_key() -> tuple[str, str]:
    """(private key as OBJATHOR_SIGNING_KEY takes it, public key as --trusted-key takes it)."""
    key = Ed25519PrivateKey.generate()
    return b64(raw_private(key)), b64(raw_public(key))


def fingerprint(public: str) -> str:
    return hashlib.sha256(base64.b64decode(public)).hexdigest()[:16]


def secret_pieces(private: str) -> list[str]:
    """The forms in which a private key could leak: its text, its raw bytes as hex, its PEM body."""
    raw = base64.b64decode(private)
    return [private, private[:16], raw.hex(), raw.hex()[:16]]


def assert_no_secret(text: str, private: str) -> None:
    for piece in secret_pieces(private):
        assert piece not in text, "the private key leaked"


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("objathor-release: error: ")]
    assert len(errors) == 1, stderr
    assert "Traceback" not in stderr
    return errors[0]


# ---------------------------------------------------------------------- keys and signatures


def test_keygen_writes_a_private_0600_file_and_prints_the_public_key(tmp_path: Path) -> None:
    out = tmp_path / "release.key"
    proc = run_cli("keygen", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    pem = out.read_text()
    assert pem.startswith("-----BEGIN PRIVATE KEY-----\n")
    loaded = serialization.load_pem_private_key(pem.encode(), password=None)
    assert isinstance(loaded, Ed25519PrivateKey)
    private = b64(raw_private(loaded))
    public = (tmp_path / "release.key.pub").read_text().strip()
    assert public == b64(raw_public(loaded))
    assert f"public key: {public}" in proc.stdout
    assert f"fingerprint: {fingerprint(public)}" in proc.stdout
    pem_body = "".join(pem.splitlines()[1:-1])
    for text in (proc.stdout, proc.stderr):
        assert_no_secret(text, private)
        assert pem_body not in text and pem_body[-16:] not in text
    signer = load_signing_key(pem)
    assert signer.key_id == parse_public_key(public, "test") == load_trusted_key(str(out) + ".pub")
    assert pem_body[-16:] not in repr(signer) and fingerprint(public) in repr(signer)
    with pytest.raises(UsageError, match="it holds a PRIVATE key"):  # the wrong half of the pair
        load_trusted_key(str(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release.key", "release.key.pub"]
    # A second keygen never silently replaces a key.
    again = run_cli("keygen", "--output", str(out))
    assert again.returncode == 2
    assert "already exists: pass --force" in one_error_line(again.stderr)
    assert out.read_text() == pem
    forced = run_cli("keygen", "--output", str(out), "--force")
    assert forced.returncode == 0 and out.read_text() != pem
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


def test_sign_and_verify_round_trip_and_what_does_not_verify() -> None:
    private, public = new_key()
    other_private, other_public = new_key()
    data = b'{"version": "2024_02_01"}\n'
    sig = sign_manifest(data, private)
    assert len(sig) == 64
    key, other = parse_public_key(public, "t"), parse_public_key(other_public, "t")
    assert verify_manifest_signature(data, sig, [other, key]) == key
    assert verify_manifest_signature(data, sig, [other]) is None
    assert verify_manifest_signature(data + b" ", sig, [key]) is None  # one byte more
    assert verify_manifest_signature(data, sig[:-1], [key]) is None
    assert verify_manifest_signature(data, bytes(64), [key]) is None
    assert verify_manifest_signature(data, sign_manifest(data, other_private), [key]) is None
    assert verify_manifest_signature(data, sig, []) is None


def test_private_key_formats_all_give_the_same_key() -> None:
    key = Ed25519PrivateKey.generate()
    raw, pub = raw_private(key), raw_public(key)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    forms = [b64(raw), b64(raw) + "\n", f"  {b64(raw)}  ", b64(raw + pub), pem, pem.strip()]
    for form in forms:
        assert load_signing_key(form).key_id.raw == pub


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_signature_is_what_openssl_makes_and_checks(tmp_path: Path) -> None:
    """The documented stock-tool check: openssl signs the same bytes and verifies ours."""
    key_pem, pub_pem = tmp_path / "k.pem", tmp_path / "pub.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(key_pem)], check=True,
                   capture_output=True)
    subprocess.run(["openssl", "pkey", "-in", str(key_pem), "-pubout", "-out", str(pub_pem)], check=True,
                   capture_output=True)
    manifest = tmp_path / "manifest.json"
    manifest.write_bytes(b'{"artifacts": [], "version": "2024_02_01"}\n')
    ours = tmp_path / "manifest.json.sig"
    ours.write_bytes(sign_manifest(manifest.read_bytes(), key_pem.read_text()))
    check = subprocess.run(["openssl", "pkeyutl", "-verify", "-pubin", "-inkey", str(pub_pem), "-rawin",
                            "-in", str(manifest), "-sigfile", str(ours)], capture_output=True, text=True)
    assert check.returncode == 0 and "Signature Verified Successfully" in check.stdout
    theirs = tmp_path / "openssl.sig"
    subprocess.run(["openssl", "pkeyutl", "-sign", "-inkey", str(key_pem), "-rawin", "-in", str(manifest),
                    "-out", str(theirs)], check=True, capture_output=True)
    assert theirs.read_bytes() == ours.read_bytes()  # Ed25519 is deterministic
    assert load_trusted_key(str(pub_pem)) == load_signing_key(key_pem.read_text()).key_id


def _rsa_pem() -> str:
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def _encrypted_pem() -> str:
    key = Ed25519PrivateKey.generate()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(b"pw")).decode()


def _wrong_half() -> str:
    a, b = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    return b64(raw_private(a) + raw_public(b))


@pytest.mark.parametrize("make_key, problem", [
    (lambda: "c2VjcmV0LWtleS1tYXRlcmlhbA!!", "not base64"),
    (lambda: b64(bytes(range(31))), "decodes to 31 bytes, not 32"),
    (lambda: b64(bytes(range(33))), "decodes to 33 bytes, not 32"),
    (lambda: b64(bytes(range(48))), "decodes to 48 bytes, not 32"),
    (_wrong_half, "not a private key followed by its own public key"),
    (lambda: "-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n", "cannot be read"),
    (_encrypted_pem, "the PEM key is encrypted"),
    (_rsa_pem, "not Ed25519"),
], ids=["not-base64", "31-bytes", "33-bytes", "48-bytes", "wrong-public-half", "bad-pem", "encrypted-pem",
        "rsa-pem"])
def test_malformed_private_key_is_one_line_that_does_not_echo_it(make_key: Any, problem: str) -> None:
    text = make_key()
    with pytest.raises(UsageError) as info:
        load_signing_key(text)
    message = str(info.value)
    assert message.startswith("OBJATHOR_SIGNING_KEY is not a valid Ed25519 private key (")
    assert problem in message and "keygen" in message and "\n" not in message
    body = "".join(ln for ln in text.splitlines() if not ln.startswith("-----"))
    for piece in (text.strip(), body[:12], body[-12:]):
        assert piece not in message
        assert all(piece not in repr(a) for a in info.value.args)
    assert info.value.__cause__ is None and info.value.__context__ is None


@pytest.mark.parametrize("value, problem", [
    ("bm90LWEta2V5", "decodes to 9 bytes, not the 32"),
    ("%%%%", "it is not base64"),
    (b64(bytes(64)), "decodes to 64 bytes"),
])
def test_bad_trusted_key_value_is_named_by_position_not_echoed(value: str, problem: str) -> None:
    with pytest.raises(UsageError) as info:
        load_trusted_key(value, 2)
    message = str(info.value)
    assert message.startswith("--trusted-key number 2 (not a file): not an Ed25519 public key")
    assert problem in message and value not in message


def test_trusted_key_files(tmp_path: Path) -> None:
    private, public = new_key()
    plain = tmp_path / "k.pub"
    plain.write_text(f"# the release key\n{public}\n")
    assert load_trusted_key(str(plain)).public_key == public
    key = load_signing_key(private)
    pem = tmp_path / "k.pem"
    pem.write_bytes(Ed25519PrivateKey.from_private_bytes(base64.b64decode(private)).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    assert load_trusted_key(str(pem)) == key.key_id
    secret = tmp_path / "private.pem"
    secret.write_bytes(Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(UsageError, match="it holds a PRIVATE key: pass the public key"):
        load_trusted_key(str(secret))
    with pytest.raises(UsageError, match=r"k.dir: not a regular file"):
        (tmp_path / "k.dir").mkdir()
        load_trusted_key(str(tmp_path / "k.dir"))
    big = tmp_path / "big.pub"
    big.write_bytes(b"A" * 70_000)
    with pytest.raises(UsageError, match="larger than 65536 bytes"):
        load_trusted_key(str(big))


def test_trusted_keys_file_is_validated_line_by_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, first = new_key()
    _, second = new_key()
    path = tmp_path / "trusted_keys.txt"
    path.write_text(f"# keys\n{first} release 2024\n\n{second}  # backup\n{first}\n")
    assert [k.public_key for k in package_trusted_keys(path)] == [first, second]
    monkeypatch.setenv("OBJATHOR_TRUSTED_KEYS", str(path))
    assert [k.public_key for k in package_trusted_keys()] == [first, second]
    path.write_text(f"{first}\nnot-a-key name\n")
    with pytest.raises(UsageError, match=rf"^{path}:2: not an Ed25519 public key \(it is not base64\)"):
        package_trusted_keys(path)
    with pytest.raises(UsageError, match="no such trusted keys file: check \\$OBJATHOR_TRUSTED_KEYS"):
        package_trusted_keys(tmp_path / "missing.txt")


@pytest.mark.timeout(10)
def test_trusted_key_fifo_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "key.fifo"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="key.fifo: not a regular file"):
        load_trusted_key(str(fifo))


# ---------------------------------------------------------------------- the registry


def test_registry_parses_comments_and_pins(tmp_path: Path) -> None:
    path = tmp_path / "manifests.txt"
    path.write_text(f"# pins\n\n2023_09_23 sha256:{SHA_A}  # the first\n# next\n2024_02_01 sha256:{SHA_B}\n")
    reg = load_registry(path)
    assert reg.pinned("2023_09_23") == SHA_A and reg.pinned("2024_02_01") == SHA_B
    assert reg.pinned("2024_08_16") is None
    assert pinned_sha256("2024_02_01", registry=path) == SHA_B
    assert reg.render() == path.read_text()  # nothing lost or reordered by a round trip


def test_package_registry_is_valid_and_holds_no_invented_entries() -> None:
    reg = load_registry(None)
    assert reg.path.name == "manifests.txt" and reg.path.parent.name == "registry"
    assert reg.entries == {}
    assert package_trusted_keys(None) == []


@pytest.mark.parametrize("line, problem", [
    (f"2024_02_01 sha256:{SHA_A} extra", "3 fields, not 2"),
    ("2024_02_01", "1 fields, not 2"),
    (f"2024-02-01 sha256:{SHA_A}", "version '2024-02-01' is not YYYY_MM_DD"),
    (f"2024_02_01 sha256:{SHA_A.upper()}", "is not sha256:<64 lower-case hex>"),
    (f"2024_02_01 sha256:{SHA_A[:63]}", "is not sha256:<64 lower-case hex>"),
    (f"2024_02_01 md5:{'a' * 32}", "is not sha256:<64 lower-case hex>"),
    (f"2024_02_01 {SHA_A}", "is not sha256:<64 lower-case hex>"),
    (f"2023_01_01 sha256:{SHA_B}", "comes after 2023_09_23: the lines are not sorted"),
    (f"2023_09_23 sha256:{SHA_B}", "version 2023_09_23 is listed twice"),
])
def test_malformed_registry_line_is_named(tmp_path: Path, line: str, problem: str) -> None:
    path = tmp_path / "manifests.txt"
    path.write_text(f"# header\n2023_09_23 sha256:{SHA_A}\n{line}\n")
    with pytest.raises(InputError) as info:
        load_registry(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3: ") and problem in message and "\n" not in message


def test_registry_that_is_not_text_or_not_a_file(tmp_path: Path) -> None:
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"2024_02_01 sha256:\xff\xfe\n")
    with pytest.raises(InputError, match=r"bin.txt: manifest registry is not UTF-8 text \(byte 18\)"):
        load_registry(binary)
    with pytest.raises(InputError, match="is not a regular file"):
        load_registry(tmp_path)
    with pytest.raises(UsageError, match="no such manifest registry"):
        load_registry(tmp_path / "missing.txt")


@pytest.mark.timeout(10)
def test_registry_fifo_does_not_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "reg.fifo"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="reg.fifo: manifest registry is not a regular file"):
        load_registry(fifo)


def test_add_pin_keeps_sorted_atomic_and_refuses_changes(tmp_path: Path) -> None:
    path = tmp_path / "manifests.txt"
    path.write_text(f"# header comment\n# second\n2023_09_23 sha256:{SHA_A}\n")
    assert add_pin("2024_02_01", SHA_B, registry=path) == "added"
    assert add_pin("2023_07_28", SHA_B, registry=path) == "added"
    assert path.read_text() == (f"# header comment\n# second\n2023_07_28 sha256:{SHA_B}\n"
                                f"2023_09_23 sha256:{SHA_A}\n2024_02_01 sha256:{SHA_B}\n")
    before = path.read_bytes()
    with open(path, "rb") as held:  # a reader holding the old file keeps seeing it whole
        assert add_pin("2024_02_01", SHA_B, registry=path) == "unchanged"
        with pytest.raises(PublishedError) as info:
            add_pin("2024_02_01", SHA_A, registry=path)
        assert info.value.exit_code == 3
        assert f"version 2024_02_01 is already pinned to sha256:{SHA_B}, not sha256:{SHA_A}" in str(info.value)
        assert path.read_bytes() == before
        assert add_pin("2024_02_01", SHA_A, registry=path, force=True) == "replaced"
        assert held.read() == before  # replaced by a rename, never rewritten in place
    assert path.read_text().endswith(f"2024_02_01 sha256:{SHA_A}\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifests.txt"]  # no temporary left behind
    load_registry(path)  # still valid
    fresh = tmp_path / "new" / "pins.txt"
    assert add_pin("2024_02_01", SHA_A, registry=fresh) == "added"
    assert fresh.read_text() == f"2024_02_01 sha256:{SHA_A}\n"


def test_add_pin_refuses_a_malformed_registry_without_touching_it(tmp_path: Path) -> None:
    path = tmp_path / "manifests.txt"
    path.write_text(f"2024_02_01 sha256:{SHA_A}\n2023_09_23 sha256:{SHA_A}\n")
    before = path.read_bytes()
    with pytest.raises(InputError, match=r"manifests.txt:2: .*not sorted"):
        add_pin("2025_01_01", SHA_B, registry=path)
    assert path.read_bytes() == before


def test_registry_commands(tmp_path: Path) -> None:
    rel = make_release(tmp_path / "rel", {"annotations.json.gz": random_bytes(1000, 1)})
    reg = tmp_path / "pins.txt"
    digest = hashlib.sha256((rel / "manifest.json").read_bytes()).hexdigest()
    assert manifest_file_sha256(rel / "manifest.json", V) == digest
    added = run_cli("registry", "add", "--version", V, "--release-dir", str(rel), "--registry", str(reg))
    assert added.returncode == 0, added.stderr
    assert f"{V} sha256:{digest} (added)" in added.stdout
    other = run_cli("registry", "add", "--version", "2023_09_23", "--manifest", str(rel / "manifest.json"),
                    "--registry", str(reg))
    assert other.returncode == 2
    assert f"is the manifest of version {V}, not 2023_09_23" in one_error_line(other.stderr)
    (rel / "annotations.json.gz").write_bytes(b"changed")
    from tests.support.fixtures_upload import write_manifest_files

    write_manifest_files(rel)
    changed = run_cli("registry", "add", "--version", V, "--release-dir", str(rel), "--registry", str(reg))
    assert changed.returncode == 3
    assert "already pinned" in one_error_line(changed.stderr) and "--force" in changed.stderr
    listing = run_cli("registry", "list", env={"OBJATHOR_REGISTRY": str(reg)})
    assert listing.returncode == 0 and listing.stdout == f"{V} sha256:{digest}\n"
    assert f"1 version pinned in {reg}" in listing.stderr
    reg.write_text("2024_02_01 nonsense\n")
    broken = run_cli("registry", "list", "--registry", str(reg))
    assert broken.returncode == 2
    assert f"{reg}:1: '2024_02_01 nonsense': 'nonsense' is not sha256" in one_error_line(broken.stderr)


# ---------------------------------------------------------------------- the origin check itself


def test_check_manifest_origin_cases(tmp_path: Path) -> None:
    private, public = new_key()
    key = parse_public_key(public, "t")
    data = b'{"version": "2024_02_01"}'
    sig = sign_manifest(data, private)
    reg = tmp_path / "pins.txt"
    reg.write_text(f"{V} sha256:{hashlib.sha256(data).hexdigest()}\n")
    good = check_manifest_origin(V, data, sig, trusted_keys=[key], registry=reg)
    assert (good.pinned, good.signature, good.key) == (True, "good", key)
    assert good.notes() == [f"manifest: sha256:{hashlib.sha256(data).hexdigest()[:12]}... matches the "
                            f"registry's pin for {V}", f"signature: good (key {key.fingerprint})"]
    plain = check_manifest_origin("2023_09_23", data, None, registry=reg)
    assert (plain.pinned, plain.signature, plain.notes()) == (False, "not checked", [])
    with pytest.raises(OriginError, match="is not the one published for 2024_02_01"):
        check_manifest_origin(V, data + b"\n", None, registry=reg)
    with pytest.raises(OriginError, match="is missing, but version 2024_02_01 was published with"):
        check_manifest_origin(V, None, None, registry=reg)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(OriginError, match="is 10 bytes, not a 64-byte Ed25519 signature"):
        check_manifest_origin(V, data, b"0123456789", trusted_keys=[key], registry=empty)
    with pytest.raises(OriginError, match="has no manifest.json at manifest.json, so nothing of it is signed"):
        check_manifest_origin(V, None, None, require_signature=True, registry=empty)
    with pytest.raises(OriginError, match="is signed, but no trusted key was given"):
        check_manifest_origin(V, data, sig, require_signature=True, registry=empty)


# ---------------------------------------------------------------------- publishing signs


def small_release(root: Path) -> Path:
    return make_release(root, {"assets.tar": tar_bytes(20_000, seed=3),
                               "annotations.json.gz": random_bytes(5_000, seed=4)})


def test_sign_release_without_a_key_removes_a_stale_signature(tmp_path: Path) -> None:
    rel = small_release(tmp_path / "rel")
    private, public = new_key()
    signed = sign_release(rel, {"OBJATHOR_SIGNING_KEY": private})
    sig = (rel / "manifest.json.sig").read_bytes()
    assert signed.key == parse_public_key(public, "t")
    assert signed.message == f"{rel}/manifest.json.sig: signed manifest.json with key {fingerprint(public)}"
    assert verify_manifest_signature((rel / "manifest.json").read_bytes(), sig, [signed.key]) == signed.key
    assert sorted(p.name for p in rel.iterdir() if p.name.startswith(".")) == []  # no temporary left
    unsigned = sign_release(rel, {})
    assert unsigned.key is None and not (rel / "manifest.json.sig").exists()
    assert "not signed ($OBJATHOR_SIGNING_KEY is not set); removed the earlier manifest.json.sig" in \
        unsigned.message
    assert sign_release(rel, {"OBJATHOR_SIGNING_KEY": " "}).message.endswith("is not set)")


def test_publish_signs_uploads_the_signature_and_never_shows_the_key(
        tmp_path: Path, s3_env: dict[str, str], s3_client: Any, bucket: str) -> None:
    rel = small_release(tmp_path / V)
    private, public = new_key()
    proc = run_cli("publish", "--version", V, "--release-dir", str(rel), "--bucket", bucket, "-v",
                   env={"OBJATHOR_SIGNING_KEY": private})
    assert proc.returncode == 0, proc.stderr
    assert f"signed manifest.json with key {fingerprint(public)}" in proc.stderr
    assert_no_secret(proc.stdout + proc.stderr, private)
    for path in files_under(rel):  # artifacts, state files, stamps: none holds the key
        content = path.read_bytes()
        for piece in secret_pieces(private):
            assert piece.encode() not in content, f"the private key leaked into {path}"
        assert base64.b64decode(private) not in content
    sig = (rel / "manifest.json.sig").read_bytes()
    manifest = (rel / "manifest.json").read_bytes()
    key = parse_public_key(public, "t")
    assert verify_manifest_signature(manifest, sig, [key]) == key
    remote = s3_client.get_object(Bucket=bucket, Key=f"{V}/manifest.json.sig")["Body"].read()
    assert remote == sig
    assert s3_client.get_object(Bucket=bucket, Key=f"{V}/manifest.json")["Body"].read() == manifest


def test_publish_with_a_malformed_key_stops_before_uploading(
        tmp_path: Path, s3_env: dict[str, str], s3_client: Any, bucket: str) -> None:
    rel = small_release(tmp_path / V)
    bad = b64(bytes(range(20)))
    proc = run_cli("publish", "--version", V, "--release-dir", str(rel), "--bucket", bucket,
                   env={"OBJATHOR_SIGNING_KEY": bad})
    assert proc.returncode == 2
    line = one_error_line(proc.stderr)
    assert "OBJATHOR_SIGNING_KEY is not a valid Ed25519 private key (it decodes to 20 bytes" in line
    assert bad not in proc.stdout + proc.stderr
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert not (rel / "manifest.json.sig").exists()


def test_publish_without_a_key_says_so_in_one_line(
        tmp_path: Path, s3_env: dict[str, str], s3_client: Any, bucket: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    rel = small_release(tmp_path / V)
    monkeypatch.delenv("OBJATHOR_SIGNING_KEY", raising=False)
    proc = run_cli("publish", "--version", V, "--release-dir", str(rel), "--bucket", bucket)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("not signed ($OBJATHOR_SIGNING_KEY is not set)") == 1
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]]
    assert f"{V}/manifest.json" in keys and f"{V}/manifest.json.sig" not in keys


def test_key_never_reaches_log_records_or_captured_output(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    rel = small_release(tmp_path / "rel")
    private, _ = new_key()
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("OBJATHOR_SIGNING_KEY", private)
    from objathor_release.cli import main

    assert main(["publish", "--version", V, "--release-dir", str(rel), "--bucket", "b", "--dry-run",
                 "--endpoint-url", "http://127.0.0.1:9"]) == 0
    monkeypatch.setenv("OBJATHOR_SIGNING_KEY", private[:-4] + "!!!!")
    assert main(["publish", "--version", V, "--release-dir", str(rel), "--bucket", "b", "--dry-run",
                 "--endpoint-url", "http://127.0.0.1:9"]) == 2
    out = capsys.readouterr()
    assert "not a valid Ed25519 private key (not base64)" in out.err
    logged = "\n".join(r.getMessage() + repr(r.args) for r in caplog.records)
    for text in (out.out, out.err, logged):
        assert_no_secret(text, private)


# ---------------------------------------------------------------------- signed downloads from nginx


def served(web: Nginx, tmp_path: Path, *, signed_with: str | None = None) -> tuple[str, Release]:
    """A release under a fresh folder of the web root, signed with ``signed_with`` when given."""
    folder = uuid.uuid4().hex[:10]
    src = tmp_path / "src" / "assets"
    make_sample_dataset(src, 4, seed=5, asset_bytes=8 * 1024)
    release = build_release(src, web.root / folder, V)
    if signed_with is not None:
        sig = sign_manifest((release.vdir / "manifest.json").read_bytes(), signed_with)
        (release.vdir / "manifest.json.sig").write_bytes(sig)
    return f"{web.url}/{folder}", release


def download(base: str, dest: Path, *args: str, env: dict[str, str] | None = None,
             ) -> subprocess.CompletedProcess[str]:
    return run_cli("download", "all", "--version", V, "--path", str(dest), "--base-url", base, *args,
                   env={**QUIET, **(env or {})})


def test_signed_release_with_the_right_key_downloads_and_says_so(web: Nginx, tmp_path: Path) -> None:
    private, public = new_key()
    base, release = served(web, tmp_path, signed_with=private)
    dest = tmp_path / "dl"
    proc = download(base, dest, "--trusted-key", public, "--require-signature")
    assert proc.returncode == 0, proc.stderr
    assert f"signature: good (key {fingerprint(public)})" in proc.stdout
    assert (dest / V / "annotations.json.gz").exists() and (dest / V / "assets").is_dir()
    # The same through the library, with the key in a file and in a trusted-keys file.
    pub_file = tmp_path / "release.pub"
    pub_file.write_text(public + "\n")
    result = download_version("annotations", V, path=tmp_path / "dl2", base_url=base, show_progress=False,
                              http_config=FAST, trusted_keys=[str(pub_file)])
    assert result.origin is not None and result.origin.signature == "good"
    assert result.origin.key == KeyId(base64.b64decode(public))
    keys_file = tmp_path / "trusted_keys.txt"
    keys_file.write_text(f"# ours\n{new_key()[1]} other\n{public} release key\n")
    via_package = download(base, tmp_path / "dl3", "--require-signature",
                           env={"OBJATHOR_TRUSTED_KEYS": str(keys_file)})
    assert via_package.returncode == 0, via_package.stderr
    assert f"signature: good (key {fingerprint(public)})" in via_package.stdout


def test_wrong_key_fails_in_one_line_and_places_nothing(web: Nginx, tmp_path: Path) -> None:
    private, _ = new_key()
    _, other_public = new_key()
    base, _ = served(web, tmp_path, signed_with=private)
    dest = tmp_path / "dl"
    proc = download(base, dest, "--trusted-key", other_public)
    assert proc.returncode == 1
    line = one_error_line(proc.stderr)
    assert f"the signature {base}/{V}/manifest.json.sig of version {V}'s manifest does not verify with any " \
           f"trusted key ({fingerprint(other_public)})" in line
    assert "do not use this copy; report it" in line
    assert files_under(dest) == []


@pytest.mark.parametrize("tamper", ["reformatted", "artifact-changed"])
def test_tampered_manifest_fails(web: Nginx, tmp_path: Path, tamper: str) -> None:
    private, public = new_key()
    base, release = served(web, tmp_path, signed_with=private)
    path = release.vdir / "manifest.json"
    manifest = json.loads(path.read_bytes())
    if tamper == "reformatted":  # same content, other bytes: the signature covers the bytes
        path.write_text(json.dumps(manifest))
    else:  # what an attacker who also replaced annotations.json.gz would serve
        evil = b"\x1f\x8b" + b"evil" * 10
        (release.vdir / "annotations.json.gz").write_bytes(evil)
        art = next(a for a in manifest["artifacts"] if a["name"] == "annotations.json.gz")
        art["size"], art["sha256"] = len(evil), hashlib.sha256(evil).hexdigest()
        path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    dest = tmp_path / "dl"
    proc = download(base, dest, "--trusted-key", public)
    assert proc.returncode == 1
    assert "does not verify with any trusted key" in one_error_line(proc.stderr)
    assert files_under(dest) == []


def test_unsigned_release_refused_with_require_signature(web: Nginx, tmp_path: Path) -> None:
    _, public = new_key()
    base, _ = served(web, tmp_path)
    dest = tmp_path / "dl"
    refused = download(base, dest, "--trusted-key", public, "--require-signature")
    assert refused.returncode == 1
    assert f"version {V} is not signed ({base}/{V}/manifest.json.sig was not found) and --require-signature " \
           "was given" in one_error_line(refused.stderr)
    assert files_under(dest) == []
    no_key = download(base, dest, "--require-signature")
    assert no_key.returncode == 1 and "is not signed" in one_error_line(no_key.stderr)
    allowed = download(base, dest, "--trusted-key", public)
    assert allowed.returncode == 0, allowed.stderr
    assert f"signature: none (version {V} is not signed; its origin is not checked)" in allowed.stdout
    assert "signature: good" not in allowed.stdout


def test_signed_release_without_a_trusted_key(web: Nginx, tmp_path: Path) -> None:
    private, _ = new_key()
    base, _ = served(web, tmp_path, signed_with=private)
    refused = download(base, tmp_path / "dl", "--require-signature")
    assert refused.returncode == 1
    assert "is signed, but no trusted key was given" in one_error_line(refused.stderr)
    assert files_under(tmp_path / "dl") == []
    plain = download(base, tmp_path / "dl2")
    assert plain.returncode == 0, plain.stderr
    assert "signature:" not in plain.stdout  # nothing was checked, so nothing is claimed


@pytest.mark.parametrize("code", [401, 403, 500])
def test_signature_fetch_errors_are_not_unsigned(web: Nginx, tmp_path: Path, code: int) -> None:
    private, public = new_key()
    base, _ = served(web, tmp_path, signed_with=private)

    def rule(req: Request) -> Any:
        return status(code) if req.path.endswith("manifest.json.sig") else PASS

    dest = tmp_path / "dl"
    with FaultProxy(web.url, rule) as proxy:
        url = proxy.url + "/" + base.rsplit("/", 1)[1]
        with pytest.raises(TransferError) as info:
            download_version("all", V, path=dest, base_url=url, show_progress=False, http_config=FAST,
                             trusted_keys=[public])
    message = str(info.value)
    assert f"{url}/{V}/manifest.json.sig" in message and f"HTTP {code}" in message
    assert "\n" not in message
    if code != 500:
        assert f"answered HTTP {code}: cannot tell whether the version is signed (only 404 means unsigned)" \
            in message
    assert files_under(dest) == []


def test_signature_that_is_a_folder_on_the_server(web: Nginx, tmp_path: Path) -> None:
    """nginx answers a folder with a redirect and then 403: an error, not "unsigned"."""
    _, public = new_key()
    base, release = served(web, tmp_path)
    (release.vdir / "manifest.json.sig").mkdir()
    dest = tmp_path / "dl"
    proc = download(base, dest, "--trusted-key", public)
    assert proc.returncode == 1
    line = one_error_line(proc.stderr)
    assert f"{base}/{V}/manifest.json.sig answered HTTP 403: cannot tell whether the version is signed" in line
    assert files_under(dest) == []


def test_registry_pin_that_matches_and_one_that_does_not(web: Nginx, tmp_path: Path) -> None:
    base, release = served(web, tmp_path)
    digest = hashlib.sha256((release.vdir / "manifest.json").read_bytes()).hexdigest()
    reg = tmp_path / "pins.txt"
    reg.write_text(f"2023_09_23 sha256:{SHA_A}\n{V} sha256:{digest}\n")
    ok = download(base, tmp_path / "dl", env={"OBJATHOR_REGISTRY": str(reg)})
    assert ok.returncode == 0, ok.stderr
    assert f"manifest: sha256:{digest[:12]}... matches the registry's pin for {V}" in ok.stdout
    unlisted = tmp_path / "other.txt"
    unlisted.write_text(f"2023_09_23 sha256:{SHA_A}\n")
    plain = download(base, tmp_path / "dl2", env={"OBJATHOR_REGISTRY": str(unlisted)})
    assert plain.returncode == 0, plain.stderr
    assert "registry's pin" not in plain.stdout and "signature:" not in plain.stdout
    reg.write_text(f"{V} sha256:{SHA_B}\n")
    dest = tmp_path / "dl3"
    bad = download(base, dest, env={"OBJATHOR_REGISTRY": str(reg)})
    assert bad.returncode == 1
    line = one_error_line(bad.stderr)
    assert f"the manifest served at {base}/{V}/manifest.json is not the one published for {V}: its sha256 is " \
           f"{digest}, the registry {reg} pins {SHA_B}: do not use this copy; report it" in line
    assert files_under(dest) == []


def test_pinned_version_without_a_manifest_is_refused(web: Nginx, tmp_path: Path) -> None:
    base, release = served(web, tmp_path)
    (release.vdir / "manifest.json").unlink()
    reg = tmp_path / "pins.txt"
    reg.write_text(f"{V} sha256:{SHA_A}\n")
    dest = tmp_path / "dl"
    proc = download(base, dest, env={"OBJATHOR_REGISTRY": str(reg)})
    assert proc.returncode == 1
    assert f"manifest.json is missing, but version {V} was published with a manifest.json" in \
        one_error_line(proc.stderr)
    assert files_under(dest) == []


def test_bad_trusted_key_or_registry_stops_before_any_request(web: Nginx, tmp_path: Path) -> None:
    base, _ = served(web, tmp_path)
    folder = base.rsplit("/", 1)[1]
    seen = len([r for r in web.access_log() if f"/{folder}/" in r["uri"]])
    bad_key = download(base, tmp_path / "dl", "--trusted-key", "not-a-key")
    assert bad_key.returncode == 2
    assert "--trusted-key number 1 (not a file): not an Ed25519 public key" in one_error_line(bad_key.stderr)
    reg = tmp_path / "pins.txt"
    reg.write_text("garbage\n")
    bad_reg = download(base, tmp_path / "dl", env={"OBJATHOR_REGISTRY": str(reg)})
    assert bad_reg.returncode == 2
    assert f"{reg}:1: 'garbage': 1 fields, not 2" in one_error_line(bad_reg.stderr)
    assert len([r for r in web.access_log() if f"/{folder}/" in r["uri"]]) == seen
    assert files_under(tmp_path / "dl") == []


def test_parse_registry_names_its_path() -> None:
    reg = parse_registry(f"{V} sha256:{SHA_A}\n", Path("x/manifests.txt"))
    assert reg.path == Path("x/manifests.txt") and reg.pinned(V) == SHA_A


def test_signed_release_stays_verifiable_and_a_rerun_changes_nothing(
        tmp_path: Path, s3_env: dict[str, str], s3_client: Any, bucket: str) -> None:
    """manifest.json.sig is not an artifact: verify ignores it and a second release neither rebuilds the
    manifest nor republishes."""
    assets = tmp_path / "assets"
    make_sample_dataset(assets, 3, seed=9, asset_bytes=4 * 1024)
    rel = tmp_path / "release" / V
    private, public = new_key()
    args = ("release", "--version", V, "--assets-dir", str(assets), "--release-dir", str(rel), "--bucket",
            bucket, "--chunk-size", "5M")
    first = run_cli(*args, env={"OBJATHOR_SIGNING_KEY": private})
    assert first.returncode == 0, first.stderr
    manifest = (rel / "manifest.json").read_bytes()
    assert all(a["name"] != "manifest.json.sig" for a in json.loads(manifest)["artifacts"])
    verify = run_cli("verify", "--release-dir", str(rel))
    assert verify.returncode == 0, verify.stderr
    again = run_cli(*args, env={"OBJATHOR_SIGNING_KEY": private})
    assert again.returncode == 0, again.stderr
    assert "manifest.json: up to date" in again.stderr
    assert (rel / "manifest.json").read_bytes() == manifest
    key = parse_public_key(public, "t")
    sig = s3_client.get_object(Bucket=bucket, Key=f"{V}/manifest.json.sig")["Body"].read()
    assert verify_manifest_signature(manifest, sig, [key]) == key
