"""The CLI's registry and keygen: manifest pins and signing keys."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from objathor_release.cli.common import env

# --------------------------------------------------------------------------- registry / keygen


def add_registry(sub: Any) -> None:
    p = sub.add_parser("registry", help="the package's pins of published manifests (registry/manifests.txt)",
                       description="List or add the sha256 of a published version's manifest.json; "
                       "download refuses a manifest of a listed version with other bytes.")
    actions = p.add_subparsers(dest="registry_command", metavar="<action>", required=True)
    add = actions.add_parser("add", help="pin a version to its manifest.json (after publishing it)")
    add.add_argument("--version", default=env("VERSION"), metavar="YYYY_MM_DD",
                     help="dataset version (default: $VERSION)")
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument("--release-dir", metavar="DIR", help="the release directory holding manifest.json")
    source.add_argument("--manifest", metavar="FILE", help="the manifest.json itself")
    add.add_argument("--force", action="store_true", help="replace a different pin of the version")
    listing = actions.add_parser("list", help="print the pinned versions")
    for q in (add, listing):
        q.add_argument("--registry", default=None, metavar="FILE",
                       help="registry file (default: $OBJATHOR_REGISTRY, else the package's manifests.txt)")
    p.set_defaults(func=_run_registry)


def _run_registry(args: argparse.Namespace) -> int:
    from pathlib import Path

    from objathor_release.settings import validate_version
    from objathor_release.trust.registry import add_pin, load_registry, manifest_file_sha256, registry_path

    if args.registry_command == "list":
        reg = load_registry(args.registry)
        for version, entry in sorted(reg.entries.items()):
            print(f"{version} sha256:{entry.sha256}")
        print(f"{len(reg.entries)} version{'s' if len(reg.entries) != 1 else ''} pinned in {reg.path}",
              file=sys.stderr)
        return 0
    version = validate_version(args.version)
    manifest = Path(args.manifest) if args.manifest else Path(args.release_dir) / "manifest.json"
    digest = manifest_file_sha256(manifest, version)
    status = add_pin(version, digest, registry=args.registry, force=args.force)
    print(f"{registry_path(args.registry)}: {version} sha256:{digest} ({status})")
    return 0


def add_keygen(sub: Any) -> None:
    p = sub.add_parser("keygen", help="make an Ed25519 key pair for signing releases",
                       description="Write a new private key to FILE (mode 0600, PEM: what "
                       "$OBJATHOR_SIGNING_KEY takes) and its public key to FILE.pub (base64: what "
                       "--trusted-key takes), and print the public key.")
    p.add_argument("--output", required=True, metavar="FILE", help="where to write the private key")
    p.add_argument("--force", action="store_true", help="replace existing key files")
    p.set_defaults(func=_run_keygen)


def _run_keygen(args: argparse.Namespace) -> int:
    from objathor_release.trust.signing import keygen

    key = keygen(args.output, force=args.force)
    print(f"wrote the private key to {args.output} (mode 0600: keep it secret; give it to publish as "
          f"$OBJATHOR_SIGNING_KEY) and the public key to {args.output}.pub")
    print(f"public key: {key.public_key}")
    print(f"fingerprint: {key.fingerprint}")
    return 0



COMMANDS = [add_registry, add_keygen]
