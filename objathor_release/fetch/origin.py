"""The served manifest.json: fetched, checked for its origin on its exact bytes, then parsed.

The cut: the network half of the origin checks. :func:`load_manifest` fetches
manifest.json (a 404, and only a 404, means a version without one), and, when
a trusted key or ``require_signature`` can make use of it, ``manifest.json.sig``
beside it; :func:`objathor_release.trust.origin.check_manifest_origin` judges
those bytes (registry pin, signature); only then is the manifest parsed and
checked against its schema, its version and safe member paths.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Any

from objathor_release.errors import InputError, ReleaseError, TransferError
from objathor_release.fetch.extract import member_parts
from objathor_release.fetch.http import Http, Info, NotFound
from objathor_release.fetch.pages import is_page_type, sniff_page
from objathor_release.trust.origin import (
    SIGNATURE_LIMIT,
    OriginResult,
    TrustPolicy,
    check_manifest_origin,
    signature_url,
)
from objathor_release.trust.registry import load_registry

MANIFEST_LIMIT = 256 * 1024 * 1024  # bytes: a manifest of 100,000 members is about 20 MB


def load_manifest(http: Http, url: str, version: str, trust: TrustPolicy,
                  uids: Collection[str] | None = None) -> tuple[dict[str, Any] | None, OriginResult]:
    """manifest.json (None if the version has none), after its origin checks on the exact bytes.

    ``uids`` (``download assets --uids``): only those assets' members are kept (see
    :func:`check_manifest_for_uids`), so a manifest of a million members costs its bytes, not a
    dict per member."""
    def check(info: Info) -> None:
        if is_page_type(info.content_type, "json"):
            raise TransferError(f"{url} returned a page of type {info.content_type} instead of JSON: "
                                "check --base-url and --version")
    try:
        data, _ = http.fetch_bytes(url, limit=MANIFEST_LIMIT, check=check)
    except NotFound:  # only a 404: an older version without one (401/403/5xx are errors, never "none")
        return None, check_served_manifest(http, url, version, None, trust)
    sniff_page(url, data, "JSON")
    origin = check_served_manifest(http, url, version, data, trust)
    if uids is not None:
        return check_manifest_for_uids(data, url, version, uids), origin
    return check_manifest(data, url, version), origin


def check_manifest_for_uids(data: bytes, url: str, version: str, uids: Collection[str]) -> dict[str, Any]:
    """``check_manifest`` of the manifest with only the members of ``uids`` (``assets/<uid>/...``) kept.

    Read line by line in the layout the project writes (:mod:`.manifest_index`), the other members
    cost a few byte comparisons each and are never parsed; a manifest in any other layout is parsed
    whole, as before. What is kept is checked as a whole manifest is (schema, version, paths)."""
    from objathor_release.fetch.manifest_index import LayoutError, members_of

    try:
        index = members_of(data, uids, name=url)
    except LayoutError:
        return check_manifest(data, url, version)
    slim = dict(index.top)
    slim["artifacts"] = [{**a.fields, "name": a.name, "size": a.size, "sha256": a.sha256,
                          "members": a.members} for a in index.artifacts.values()]
    return check_parsed(slim, url, version)


def check_manifest(data: bytes, url: str, version: str) -> dict[str, Any]:
    """Parse manifest.json; check it against schemas/manifest.schema.json, its version and member paths."""
    def bad(why: str) -> InputError:
        return InputError(f"{url}: {why}: the release's manifest is malformed; tell its publisher")

    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise bad(f"not JSON ({str(exc)[:100]})") from None
    except RecursionError:
        raise bad("nested too deeply to be a manifest") from None
    return check_parsed(manifest, url, version)


def check_parsed(manifest: Any, url: str, version: str) -> dict[str, Any]:
    """The parsed manifest checked against the schema, its version and its member paths."""
    from objathor_release.build.manifest import manifest_problems

    def bad(why: str) -> InputError:
        return InputError(f"{url}: {why}: the release's manifest is malformed; tell its publisher")

    try:
        problems = manifest_problems(manifest)
    except RecursionError:
        raise bad("nested too deeply to be a manifest") from None
    if problems:
        raise bad(f"field {problems[0]}")
    if manifest["version"] != version:
        raise bad(f"field version is {manifest['version']!r}, not {version}")
    names = [a["name"] for a in manifest["artifacts"]]
    if len(set(names)) != len(names):  # a part takes the first copy, the shard list the last: refused
        twice = next(n for i, n in enumerate(names) if n in names[:i])
        raise bad(f"field artifacts lists {twice!r} twice")
    for i, art in enumerate(manifest["artifacts"]):
        for j, m in enumerate(art["members"]):
            try:
                member_parts(m["path"])
            except ValueError as exc:
                raise bad(f"field artifacts[{i}].members[{j}].path {m['path']!r} is unsafe ({exc})") from None
    result: dict[str, Any] = manifest
    return result


def fetch_signature(http: Http, url: str) -> bytes | None:
    """The bytes of ``url`` (a manifest.json.sig); None only when the server answers 404.

    401, 403 and the like are errors: a server that will not say whether the
    signature exists must not turn a signed version into an unsigned one.
    """
    try:
        data, _ = http.fetch_bytes(url, limit=SIGNATURE_LIMIT)
    except ReleaseError as exc:
        code = getattr(exc, "status", None)
        if isinstance(exc, NotFound) and code == 404:
            return None
        if code is None:
            raise
        raise TransferError(f"{url} answered HTTP {code}: cannot tell whether the version is signed (only "
                            "404 means unsigned); check --base-url and the server's permissions") from None
    return data


def check_served_manifest(http: Http, url: str, version: str, data: bytes | None,
                          policy: TrustPolicy) -> OriginResult:
    """:func:`check_manifest_origin` for a manifest fetched from ``url``, fetching its signature
    when a trusted key or ``require_signature`` can make use of it."""
    sig = None
    if data is not None and (policy.trusted_keys or policy.require_signature):
        sig = fetch_signature(http, signature_url(url))
    return check_manifest_origin(version, data, sig, trusted_keys=policy.trusted_keys,
                                 require_signature=policy.require_signature, url=url,
                                 registry=policy.registry or load_registry())
