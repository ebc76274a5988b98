"""One shard of a distributed release, built and uploaded on its own machine; the entries merged.

A sharded release can be built by many machines at once. Each runs one shard
(``release --only-shard K``: a CI matrix job, or a Ray task): it builds shard K
from its asset folders (:func:`~objathor_release.build.shards.build_shard`, the
same bytes as GNU tar over them), uploads it to ``PREFIX/NAME`` with the usual
resumable, verified multipart upload, checks the object on the server, and only
then writes the shard's manifest entry to ``PREFIX/.shards/NAME.json``:

    {"entry_format": 1, "version": ..., "plan": <fingerprint>, "etag": ...,
     "artifact": {"name", "size", "sha256", "members", "md5", "etag", "part_size"}}

``plan`` fingerprints what decides the shard's bytes (its asset folders and
their sizes, the exclude list, the timestamp): an entry whose fingerprint is
the current plan's, over an object that still answers with the entry's size,
ETag and sha256, means the shard is done, and a re-run skips it without
building it (a killed driver resumes so). A half-uploaded shard resumes from
its parts (the upload's own record in the work folder).

The finishing run (``release --finish``) reads every entry (:func:`read_entries`),
refuses a missing one or one built from another plan, and hands them to the
pipeline, which lists them in manifest.json as artifacts built elsewhere,
uploads the rest, verifies every object (the shards by their entries' ETags)
and publishes manifest.json last. The entries stay under ``.shards/``: small,
and they let a later ``--finish`` run again.

Trust: an entry is only as good as the bucket it is in; whoever can write
there can publish anyway. Every entry is validated (shape, name, members) as a
manifest is, so a malformed one is one line, never a traceback.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from objathor_release.build.etags import ETAG_KEYS, file_digests
from objathor_release.build.manifest import MANIFEST as MANIFEST_NAME
from objathor_release.build.manifest import MANIFEST_FORMAT, manifest_problems, render_manifest, render_sums
from objathor_release.build.manifest import SUMS as SUMS_NAME
from objathor_release.build.shards import ShardPlan, build_shard
from objathor_release.errors import InputError, PublishedError
from objathor_release.fsutil import atomic_write
from objathor_release.publish.client import artifact_key, client_error, head_or_none, object_key
from objathor_release.publish.remote import object_problems, published_manifest, read_object, verify_remote
from objathor_release.publish.upload import upload_release
from objathor_release.s3.target import S3Target
from objathor_release.settings import UploadConfig

logger = logging.getLogger(__name__)

ENTRY_FORMAT = 1
ENTRY_DIR = ".shards"
ENTRY_LIMIT = 256 * 1024 * 1024  # an entry lists its shard's members: far below this even for 1M files
PLAN_STAMP = "shard.plan"  # in a shard's work folder: the fingerprint of the plan its tar was built from
_ENTRY_KEYS = {"entry_format", "version", "plan", "etag", "artifact"}
_ARTIFACT_KEYS = {"name", "size", "sha256", "members"}  # what publish_shard writes, with ETAG_KEYS


def entry_key(prefix: str, name: str) -> str:
    """Where shard ``name``'s entry is kept: ``PREFIX/.shards/NAME.json``."""
    return object_key(prefix, f"{ENTRY_DIR}/{name}.json")


def shard_fingerprint(plan: ShardPlan, index: int, epoch: int) -> str:
    """sha256 of what decides shard ``index``'s bytes besides the files' contents."""
    s = plan.shard(index)
    text = json.dumps([plan.stem, list(plan.excludes), epoch, s.name, s.size, s.files, s.data, list(s.units)])
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ShardEntry:
    """A shard uploaded and verified: its manifest entry, its ETag, the plan it was built from."""

    artifact: dict[str, Any]
    etag: str
    plan: str
    version: str

    @property
    def name(self) -> str:
        return str(self.artifact["name"])

    def to_json(self) -> dict[str, Any]:
        return {"entry_format": ENTRY_FORMAT, "version": self.version, "plan": self.plan, "etag": self.etag,
                "artifact": self.artifact}

    @classmethod
    def parse(cls, data: bytes, where: str, name: str, version: str) -> ShardEntry:
        """The entry in ``data`` (read from ``where``), checked; InputError in one line otherwise."""
        def bad(why: str) -> InputError:
            return InputError(f"{where}: {why}: run `release --only-shard` for this shard again (it "
                              "rewrites the entry)")
        try:
            doc = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            raise bad("is not a JSON shard entry") from None
        if (not isinstance(doc, dict) or set(doc) != _ENTRY_KEYS or type(doc["entry_format"]) is not int
                or doc["entry_format"] != ENTRY_FORMAT):  # type(): true == 1
            raise bad(f"is not a shard entry of format {ENTRY_FORMAT}")
        art, etag, plan = doc["artifact"], doc["etag"], doc["plan"]
        if not isinstance(etag, str) or not isinstance(plan, str) or not isinstance(art, dict):
            raise bad("field etag, plan or artifact has the wrong type")
        if not _ARTIFACT_KEYS <= set(art) <= _ARTIFACT_KEYS | set(ETAG_KEYS):  # the finish publishes them
            raise bad(f"its artifact has fields {sorted(art)}, not {sorted(_ARTIFACT_KEYS)} (and "
                      f"{', '.join(ETAG_KEYS)})")
        if doc["version"] != version:
            raise bad(f"is for version {doc['version']!r}, not {version}")
        if art.get("name") != name:
            raise bad(f"describes {art.get('name')!r}, not {name}")
        problems = manifest_problems({"manifest_format": MANIFEST_FORMAT, "version": version,
                                      "tool_version": "0", "excludes": [], "artifacts": [art]})
        if problems:
            raise bad(f"its artifact is malformed ({problems[0]})")
        return cls(art, etag, plan, version)


@dataclass(frozen=True)
class ShardOutcome:
    """What one shard's run did: its entry, and ``uploaded`` or ``already published``."""

    index: int
    entry: ShardEntry
    status: str
    bytes_sent: int = 0

    def summary(self) -> str:
        a = self.entry.artifact
        return (f"shard {self.index} {self.entry.name}: {self.status} ({a['size']} bytes, "
                f"{len(a['members'])} files, sha256 {str(a['sha256'])[:12]}..., ETag {self.entry.etag})")


def read_entry(client: Any, target: S3Target, name: str, version: str) -> ShardEntry | None:
    """Shard ``name``'s entry on the server (None when there is none)."""
    key = entry_key(target.prefix or version, name)
    data = read_object(client, target.bucket, key, ENTRY_LIMIT)
    if data is None:
        return None
    where = f"s3://{target.bucket}/{key}"
    if len(data) > ENTRY_LIMIT:
        raise InputError(f"{where}: larger than {ENTRY_LIMIT} bytes: run `release --only-shard` again")
    return ShardEntry.parse(data, where, name, version)


def _done(client: Any, target: S3Target, entry: ShardEntry | None, fingerprint: str, version: str) -> bool:
    """Whether ``entry`` is of this plan and its object still answers as it did when verified."""
    if entry is None or entry.plan != fingerprint:
        return False
    a = entry.artifact
    head = head_or_none(client, target.bucket, artifact_key(target.prefix or version, entry.name, version))
    return not object_problems(entry.name, int(a["size"]), str(a["sha256"]), entry.etag, head)


def publish_shard(client: Any, target: S3Target, plan: ShardPlan, index: int, version: str,
                  work_dir: Path, config: UploadConfig, *, epoch: int, force: bool = False,
                  show_progress: bool = False, verbose: bool = False) -> ShardOutcome:
    """Build shard ``index`` of ``plan`` in ``work_dir``, upload it, verify it, write its entry.

    Skipped (not even built) when its entry is of this plan and its object unchanged. Refused
    without ``force`` when the version is already published and its manifest does not list this
    shard with the same bytes. The shard's folder in ``work_dir`` is removed once its entry is
    written; an interrupted run leaves it, with the upload's record, to resume from."""
    shard = plan.shard(index)
    prefix = target.prefix or version
    fingerprint = shard_fingerprint(plan, index, epoch)
    entry = read_entry(client, target, shard.name, version)
    if _done(client, target, entry, fingerprint, version) and entry is not None:
        logger.info("%s: already uploaded and verified (its entry is of this plan): skipped", shard.name)
        return ShardOutcome(index, entry, "already published")
    work = work_dir / shard.name.removesuffix(".tar")
    work.mkdir(parents=True, exist_ok=True)
    art = _built_before(work, shard.name, fingerprint)
    if art is None:
        built = build_shard(plan, index, work, source_date_epoch=epoch, show_progress=show_progress,
                            verbose=verbose)
        art = {"name": shard.name, "size": built.size, "sha256": built.sha256, "members": built.members,
               **built.upload}
        with atomic_write(work / PLAN_STAMP) as fh:
            fh.write(fingerprint.encode())
    else:  # an interrupted run's tar: kept as it is, so its upload resumes from the parts already sent
        logger.info("%s: built by an earlier run of this plan: resuming its upload", shard.name)
    published = published_manifest(client, target.bucket, prefix)
    if published is not None and not force:
        listed = next((a for a in published["artifacts"] if a.get("name") == shard.name), None)
        if listed is None or listed.get("sha256") != art["sha256"]:  # art: built now, or kept to resume
            raise PublishedError(f"version {version} is already published at s3://{target.bucket}/{prefix} "
                                 f"without this {shard.name}: pass --force to replace it")
    one = {"manifest_format": MANIFEST_FORMAT, "version": version, "tool_version": "shard",
           "excludes": list(plan.excludes), "artifacts": [art]}
    with atomic_write(work / MANIFEST_NAME) as fh:  # the upload's plan for this one file
        fh.write(render_manifest(one).encode())
    with atomic_write(work / SUMS_NAME) as fh:
        fh.write(render_sums(one).encode())
    report = upload_release(client, work, target, config, force=force, show_progress=show_progress,
                            verbose=verbose, artifacts_only=True)
    verify_remote(client, target.bucket, prefix, one, release_dir=work, expected_etags=report.etags(),
                  config=config, artifacts_only=True)
    done = ShardEntry(art, report.etags()[shard.name], fingerprint, version)
    key = entry_key(prefix, shard.name)
    try:
        client.put_object(Bucket=target.bucket, Key=key, ContentType="application/json",
                          Body=(json.dumps(done.to_json(), sort_keys=True) + "\n").encode())
    except Exception as exc:  # noqa: BLE001 - one clean line; the shard itself is uploaded and kept
        raise client_error(client, exc, f"writing s3://{target.bucket}/{key}", target.bucket) from None
    shutil.rmtree(work, ignore_errors=True)
    status = "uploaded" if report.bytes_sent else "already uploaded"
    return ShardOutcome(index, done, status, report.bytes_sent)


def _built_before(work: Path, name: str, fingerprint: str) -> dict[str, Any] | None:
    """The manifest entry of ``work/NAME`` when an earlier run built it from this plan and it is
    unchanged since (its sidecar still describes it), else None."""
    from objathor_release.build.tarball import read_sidecar
    from objathor_release.fsutil import open_regular

    try:
        with open_regular(work / PLAN_STAMP) as fh:
            if fh.read(200).decode("ascii", "replace") != fingerprint:
                return None
    except OSError:
        return None
    side = read_sidecar(work / name)
    if side is None:
        return None
    fields = {k: side[k] for k in ETAG_KEYS if k in side}
    if not fields:  # kept by a version that did not record them
        try:
            fields = file_digests(work / name, side["size"])
        except OSError:
            return None
    return {"name": name, "size": side["size"], "sha256": side["sha256"], "members": side["members"],
            **fields}


def _off_plan(plan: ShardPlan, index: int, entry: ShardEntry) -> bool:
    """Whether the entry's artifact is not what the plan says shard ``index`` holds: another size,
    number of files or bytes of files, a path listed twice, or a member outside the shard's own
    asset folders (the plan knows the files' count and bytes, not their names)."""
    shard = plan.shard(index)
    art = entry.artifact
    if art["size"] != shard.size or len(art["members"]) != shard.files:
        return True
    paths = {"/".join(p for p in str(m["path"]).split("/") if p not in ("", ".")) for m in art["members"]}
    if len(paths) != len(art["members"]) or sum(int(m["size"]) for m in art["members"]) != shard.data:
        return True
    units = set(shard.units)
    top = plan.source.name
    for m in art["members"]:
        parts = [p for p in str(m["path"]).split("/") if p not in ("", ".")]
        if len(parts) < 3 or parts[0] != top or parts[1] not in units:
            return True
    return False


def read_entries(client: Any, target: S3Target, plan: ShardPlan, version: str, epoch: int,
                 on_entry: Callable[[int], None] | None = None) -> list[ShardEntry]:
    """Every shard's entry, in order, each of this plan; InputError naming the shards to run again."""
    def one(index: int) -> ShardEntry | None:
        got = read_entry(client, target, plan.shards[index].name, version)
        if on_entry is not None:
            on_entry(index)
        return got

    with ThreadPoolExecutor(max_workers=8) as pool:
        entries = list(pool.map(one, range(len(plan.shards))))
    missing = [i for i, e in enumerate(entries) if e is None]
    where = f"s3://{target.bucket}/{target.prefix or version}"
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise InputError(f"{len(missing)} of {len(plan.shards)} shards are not uploaded to {where} yet "
                         f"(shard {shown}): run `release --only-shard K` for each, then --finish again")
    stale = [i for i, e in enumerate(entries)
             if e is not None and (e.plan != shard_fingerprint(plan, i, epoch) or _off_plan(plan, i, e))]
    if stale:
        raise InputError(f"shard {stale[0]} ({plan.shards[stale[0]].name}) at {where} was built from other "
                         f"asset folders or settings than this plan ({len(stale)} such): run `release "
                         f"--only-shard {stale[0]}` again for each, with the same --shard-size and excludes")
    return [e for e in entries if e is not None]
