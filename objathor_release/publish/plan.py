"""What one upload sends: the release's manifest read and checked, then one job per file.

:func:`open_manifest` reads ``RELEASE_DIR/manifest.json`` (a regular file, never
through a symlink) and validates it as the manifest module does; these are the
bytes that will be uploaded. :func:`plan_jobs` opens every file once, checks its
size on the open descriptor and gives it its part layout: the artifacts first,
then SHA256SUMS (which must list exactly the manifest's artifacts and sha256),
manifest.json.sig when the release is signed, and manifest.json last
(:data:`FINAL_NAMES`): the manifest's presence marks a version as published.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection
from pathlib import Path, PurePosixPath
from typing import Any

from objathor_release.build.manifest import MANIFEST as MANIFEST_NAME
from objathor_release.build.manifest import SIGNATURE as SIGNATURE_NAME
from objathor_release.build.manifest import SUMS as SUMS_NAME
from objathor_release.errors import InputError
from objathor_release.publish.client import artifact_key
from objathor_release.publish.localfiles import STATE_DIR, LocalFile, ReleaseDir
from objathor_release.publish.parts import Job
from objathor_release.publish.remote import SMALL_FILE_LIMIT
from objathor_release.settings import MAX_CONNECTIONS, START_CONNECTIONS, UploadConfig, format_size

__all__ = ["FINAL_NAMES", "close_jobs", "concurrency_plan", "connections_note", "load_release_manifest",
           "open_manifest", "parse_manifest", "part_size_note", "plan_jobs"]

FINAL_NAMES = (SUMS_NAME, SIGNATURE_NAME, MANIFEST_NAME)  # uploaded last, in this order


def parse_manifest(data: bytes, path: Path) -> dict[str, Any]:
    """The manifest in ``data`` (the bytes that will be uploaded), validated like manifest.load_manifest."""
    from objathor_release.build.manifest import manifest_problems

    try:
        manifest = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: cannot be read ({exc}): rebuild it with `objathor-release manifest`") \
            from None
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc}): rebuild it with `objathor-release manifest`") \
            from None
    problems = manifest_problems(manifest)
    if problems:
        raise InputError(f"{path}: field {problems[0]} (see schemas/manifest.schema.json): "
                         "rebuild it with `objathor-release manifest`")
    seen: set[str] = set()
    for art in manifest["artifacts"]:
        if art["name"] in seen:
            raise InputError(f"{path}: field artifacts: {art['name']!r} is listed twice: "
                             "rebuild the manifest")
        seen.add(art["name"])
    result: dict[str, Any] = manifest
    return result


def open_manifest(rd: ReleaseDir) -> tuple[LocalFile, bytes, dict[str, Any]]:
    """manifest.json of ``rd``: the open file (the caller closes it), its bytes, and the parsed manifest."""
    path = rd.path / MANIFEST_NAME
    file = rd.open(MANIFEST_NAME)
    if file is None:
        raise InputError(f"{path}: not found: run 'objathor-release manifest --release-dir {rd.path}'")
    try:
        data = file.read_all(SMALL_FILE_LIMIT)
        return file, data, parse_manifest(data, path)
    except BaseException:
        file.close()
        raise


def load_release_manifest(release_dir: Path) -> dict[str, Any]:
    """Read and validate ``RELEASE_DIR/manifest.json`` (a regular file, never through a symlink)."""
    with ReleaseDir(release_dir) as rd:
        file, _, manifest = open_manifest(rd)
        file.close()
    return manifest


def check_name(name: str, release_dir: Path) -> None:
    """InputError unless ``name`` is a plain relative path inside the release dir that is not one the
    upload writes itself."""
    parts = PurePosixPath(name).parts
    reserved = (MANIFEST_NAME, SUMS_NAME, SIGNATURE_NAME)
    if name in reserved:
        raise InputError(f"{release_dir / MANIFEST_NAME}: lists {name} as an artifact, but the upload writes "
                         f"{name} itself: remove {release_dir / name} if it is stale, then rerun "
                         f"'objathor-release manifest --release-dir {release_dir}'")
    if (not name or name.startswith("/") or ".." in parts or "." in name.split("/") or "\\" in name
            or name in reserved or "\0" in name or parts[0] == STATE_DIR):
        raise InputError(f"{release_dir / MANIFEST_NAME}: artifact name {name!r} is not a relative path "
                         "inside the release dir: rebuild the manifest")


def check_sums(data: bytes, manifest: dict[str, Any], path: Path) -> None:
    """SHA256SUMS must list exactly the manifest's artifacts with their sha256 (in any order)."""
    from objathor_release.build.manifest import render_sums

    want = sorted(render_sums({"artifacts": [a]}).rstrip("\n") for a in manifest["artifacts"])
    try:
        have = sorted(line.rstrip("\n") for line in data.decode("utf-8").splitlines(keepends=True))
    except UnicodeDecodeError:
        have = []
    if have != want:
        raise InputError(f"{path}: does not list exactly the artifacts and sha256 of manifest.json: "
                         f"rerun 'objathor-release manifest --release-dir {path.parent}'")


def part_size_note(job: Job, config: UploadConfig) -> str | None:
    """The line saying a file's part size had to grow past a given ``--chunk-size``, if it had to
    (a part size chosen per file needs no note: ``--dry-run`` says how it was chosen)."""
    if not job.multipart or config.chunk_size is None or job.part_size == config.chunk_size:
        return None
    return (f"{job.name}: {format_size(job.size)} would need more than 10,000 parts of "
            f"{format_size(config.chunk_size)}: using {format_size(job.part_size)} parts")


def concurrency_plan(job: Job, config: UploadConfig) -> str:
    """The parts of ``job`` that may be in flight at once, as a dry run shows it."""
    if not job.multipart:
        return "1"
    most = min(config.per_file, job.parts)
    if not config.adaptive:
        return str(most)
    first = min(START_CONNECTIONS, most)
    return str(most) if first == most else f"{first} -> {most} (auto)"


def connections_note(config: UploadConfig) -> str:
    """How the run's connections are shared and counted, as a dry run says it."""
    files = f"up to {config.files_at_once} files at once share them, each part taking the next free one"
    if config.adaptive:
        return (f"connections: {START_CONNECTIONS} at first, doubled while the total rate grows by a tenth "
                f"or more, at most {config.connections} in all (the memory bound); {files}")
    capped = " (the memory bound)" if config.connections == MAX_CONNECTIONS else ""
    return (f"connections: at most {config.per_file} per file (--upload-concurrency), {config.connections} "
            f"in all{capped}; {files}")


def plan_jobs(rd: ReleaseDir, manifest: dict[str, Any], manifest_file: LocalFile, prefix: str,
              config: UploadConfig, *, finals: bool = True, elsewhere: Collection[str] = ()) -> list[Job]:
    """Every file to upload, artifacts first, then SHA256SUMS, manifest.json.sig (when the release
    has one) and manifest.json (``finals=False``: the artifacts only). Artifacts named in
    ``elsewhere`` were uploaded by another machine (the shards of a distributed release) and are not
    local: they get no job. Each file is opened here, once (a regular file, no symlink on the
    way), and its size checked on the open descriptor; the jobs own the descriptors (close them with
    :func:`close_jobs`; they are closed here when planning fails). Nothing is logged: the caller says
    which part sizes had to grow (:func:`part_size_note`)."""
    jobs: list[Job] = []
    version = str(manifest["version"])

    def add(name: str, file: LocalFile, size: int, sha: str, art: dict[str, Any] | None = None) -> None:
        jobs.append(Job.of(name, file, artifact_key(prefix, name, version), size, sha, config, art))

    try:
        for art in manifest["artifacts"]:
            check_name(art["name"], rd.path)
        for art in manifest["artifacts"]:
            name, size, sha = art["name"], int(art["size"]), str(art["sha256"])
            if name in elsewhere:
                continue
            file = rd.open(name)
            if file is None:
                raise InputError(f"{rd.path / name}: listed in manifest.json but missing: "
                                 "rebuild the release")
            add(name, file, size, sha, art)
            if file.size != size:
                raise InputError(f"{file.path}: size {file.size} does not match manifest.json ({size}): "
                                 "rebuild the release or rerun 'objathor-release manifest'")
        if not finals:
            return jobs
        sums = rd.open(SUMS_NAME)
        if sums is None:
            raise InputError(f"{rd.path / SUMS_NAME}: not found: run 'objathor-release manifest' for this "
                             "release dir")
        data = sums.read_all(SMALL_FILE_LIMIT)
        add(SUMS_NAME, sums, len(data), hashlib.sha256(data).hexdigest())
        check_sums(data, manifest, sums.path)
        sig = rd.open(SIGNATURE_NAME)
        if sig is not None:
            data = sig.read_all(SMALL_FILE_LIMIT)
            add(SIGNATURE_NAME, sig, len(data), hashlib.sha256(data).hexdigest())
        data = manifest_file.read_all(SMALL_FILE_LIMIT)
        add(MANIFEST_NAME, manifest_file, len(data), hashlib.sha256(data).hexdigest())
    except BaseException:
        close_jobs(jobs)
        raise
    return jobs


def close_jobs(jobs: list[Job]) -> None:
    """Close every job's file descriptor."""
    for job in jobs:
        if job.file is not None:
            job.file.close()
