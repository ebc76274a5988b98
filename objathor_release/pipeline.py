"""The release as a library: build (annotations, tars, manifest, local verify), then publish
(upload, remote verify).

``build_local`` runs the local steps and skips the ones whose outputs are up to
date: a hidden state file in the release directory records, per step, a
fingerprint of its inputs (paths, sizes and mtimes, plus the settings that
shape the output) and the size and mtime of what it wrote. ``publish`` uploads
the built release and checks every object against the manifest. Both take a
``ReleaseConfig`` and return what they did; they report through ``logging``
and print nothing (the command line, ``objathor_release.cli.release``, prints
the summary). ``make release`` runs the same steps as file targets.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from objathor_release.build.inputs import SHARDS_STAMP, check_input_dirs, fingerprint, release_inputs
from objathor_release.errors import InputError, UsageError
from objathor_release.fsutil import atomic_write, open_regular, prepare_output
from objathor_release.settings import (
    ReleaseConfig,
    UploadConfig,
    format_size,
    format_table,
    validate_version,
)

if TYPE_CHECKING:
    from objathor_release.build.annotations import BatchMap
    from objathor_release.build.shards import ShardPlan
    from objathor_release.publish.shards import ShardEntry
    from objathor_release.s3.target import S3Target

logger = logging.getLogger(__name__)

STATE_FILE = ".release-state.json"


def check_settings(cfg: ReleaseConfig, *, need_assets: bool = True, need_bucket: bool = True) -> None:
    """Stop with one clear line on a missing or malformed setting."""
    validate_version(cfg.version)
    if need_assets:
        if not cfg.assets_dir:
            raise UsageError("ASSETS_DIR is not set: pass --assets-dir (make: ASSETS_DIR=...)")
        check_input_dirs(cfg.assets_dir, cfg.features_dir, cfg.holodeck_dir)
    if need_bucket and not cfg.bucket:
        raise UsageError("BUCKET is not set: pass --bucket (make: BUCKET=...) or set $BUCKET")
    upload_config(cfg)  # validates the tunables
    if cfg.shard_size:
        from objathor_release.build.shards import parse_shard_size

        parse_shard_size(cfg.shard_size)


def upload_config(cfg: ReleaseConfig) -> UploadConfig:
    return UploadConfig.of(cfg.chunk_size, cfg.upload_concurrency, cfg.transfers)


def release_dir_of(cfg: ReleaseConfig) -> Path:
    return Path(cfg.release_dir or Path("release") / str(cfg.version))


# --------------------------------------------------------------------------- up-to-date checks


class State:
    """The release directory's record of what each step built from what."""

    def __init__(self, release_dir: Path) -> None:
        self.path = release_dir / STATE_FILE
        self.data: dict[str, Any] = {}
        try:
            with open_regular(self.path) as fh:
                data = json.loads(fh.read())
        except FileNotFoundError:
            return
        except OSError as exc:
            raise InputError(f"{self.path}: cannot be read ({exc.strerror}): remove it (every step is then "
                             "rebuilt)") from None
        except (ValueError, RecursionError):
            return  # unreadable state: every step is rebuilt
        if isinstance(data, dict):
            self.data = {k: v for k, v in data.items() if isinstance(v, dict)}

    @staticmethod
    def _stat(path: Path) -> list[int] | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        return [st.st_size, st.st_mtime_ns]

    def fresh(self, step: str, inputs: str, output: Path) -> bool:
        entry: dict[str, Any] = self.data.get(step) or {}
        return bool(entry) and entry.get("inputs") == inputs and entry.get("output") == self._stat(output)

    def record(self, step: str, inputs: str, output: Path) -> None:
        self.data[step] = {"inputs": inputs, "output": self._stat(output)}
        with atomic_write(self.path) as fh:
            fh.write((json.dumps(self.data, indent=2, sort_keys=True) + "\n").encode())


# --------------------------------------------------------------------------- the local steps


@dataclass
class LocalBuild:
    release_dir: Path
    built: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def build_local(cfg: ReleaseConfig, *, show_progress: bool = True, verbose: bool = False,
                elsewhere: list[dict[str, Any]] | None = None,
                batch_map: BatchMap | None = None) -> LocalBuild:
    """Prepare annotations, build the tars, write the manifest and verify, skipping what is up to date.

    ``elsewhere`` (the finishing run of a distributed release) are the manifest entries of the
    asset shards other machines built and uploaded: no assets tar is built here, and the manifest
    lists them beside the local artifacts (the local verify leaves them to the remote one).
    ``batch_map`` validates the annotations' batches elsewhere (see ``prepare_annotations``)."""
    from objathor_release.build.annotations import prepare_annotations
    from objathor_release.build.epoch import source_date_epoch as resolve_epoch
    from objathor_release.build.excludes import DEFAULT_EXCLUDES, exclude_list
    from objathor_release.build.manifest import MANIFEST, SIGNATURE, SUMS, verify_release, write_manifest
    from objathor_release.build.shards import build_shards, remove_stale
    from objathor_release.build.tarball import build_tar

    assert cfg.assets_dir and cfg.version
    assets = Path(cfg.assets_dir)
    rdir = release_dir_of(cfg)
    prepare_output(rdir / STATE_FILE, "release directory")
    state = State(rdir)
    out = LocalBuild(rdir)
    epoch = resolve_epoch(cfg.source_date_epoch)
    excludes = [*DEFAULT_EXCLUDES, *cfg.excludes]

    def step(name: str, inputs: str, output: Path, run: Callable[[], object]) -> None:
        if state.fresh(name, inputs, output):
            out.skipped.append(name)
            logger.info("%s: up to date", name)
            return
        run()
        state.record(name, inputs, output)
        out.built.append(name)

    def annotations() -> None:
        result = prepare_annotations(assets, rdir / "annotations.json.gz", show_progress=show_progress,
                                     batch_map=batch_map)
        logger.info("%s", result.summary())

    def tar(source: Path, name: str, default_excludes: bool = True) -> Callable[[], None]:
        def run() -> None:
            result = build_tar(source, rdir / name, extra_excludes=cfg.excludes,
                               default_excludes=default_excludes, source_date_epoch=epoch,
                               verbose=verbose, show_progress=show_progress)
            logger.info("%s", result.summary())
            if name == "assets.tar":
                for stale in remove_stale(rdir, "assets", keep=["assets.tar"]):
                    logger.info("removed %s: the release is no longer sharded", stale)
        return run

    def shards() -> None:
        plan = shard_plan(cfg)
        logger.info("assets.tar as %s", plan.summary())
        for result in build_shards(plan, rdir, source_date_epoch=epoch, show_progress=show_progress):
            logger.info("%s", result.summary())
        with atomic_write(rdir / SHARDS_STAMP) as fh:
            fh.write((json.dumps(plan.to_json(), indent=1, sort_keys=True) + "\n").encode())

    # the files each builder reads, as `objathor-release deps` lists them for make
    inputs = release_inputs(assets, cfg.features_dir, cfg.excludes, cfg.holodeck_dir)
    step("annotations.json.gz", inputs.fingerprint("annotations.json.gz"), rdir / "annotations.json.gz",
         annotations)
    if elsewhere is not None:
        for stale in remove_stale(rdir, "assets", keep=[]):
            logger.info("removed %s: this release's asset shards were built elsewhere", stale)
    elif cfg.shard_size:
        if not shards_fresh(rdir):  # a shard the stamp lists is gone or changed: build them again
            state.data.pop("assets shards", None)
        step("assets shards", inputs.fingerprint("assets.tar", epoch, excludes, cfg.shard_size),
             rdir / SHARDS_STAMP, shards)
    else:
        step("assets.tar", inputs.fingerprint("assets.tar", epoch, excludes), rdir / "assets.tar",
             tar(assets, "assets.tar"))
    if cfg.features_dir:
        step("features.tar", inputs.fingerprint("features.tar", epoch, excludes), rdir / "features.tar",
             tar(Path(cfg.features_dir), "features.tar"))
    if cfg.holodeck_dir:  # Holodeck's base data: its annotation files are data, so no default excludes
        holodeck_excludes = exclude_list(cfg.excludes, defaults=False)
        step("holodeck.tar", inputs.fingerprint("holodeck.tar", epoch, holodeck_excludes),
             rdir / "holodeck.tar", tar(Path(cfg.holodeck_dir), "holodeck.tar", default_excludes=False))
    bookkeeping = (MANIFEST, SUMS, SIGNATURE)
    given = sorted(elsewhere or [], key=lambda a: a["name"])
    artifacts = fingerprint(rdir, lambda rel: not rel.startswith(".") and rel not in bookkeeping,
                            cfg.version, epoch, json.dumps([[a["name"], a["sha256"]] for a in given]))
    step("manifest.json", artifacts, rdir / "manifest.json",
         lambda: write_manifest(rdir, cfg.version or "", show_progress=show_progress,
                                extra_artifacts=given or None))
    step("verify", fingerprint(rdir, lambda rel: not rel.startswith(".") and rel != SIGNATURE),
         rdir / MANIFEST,
         lambda: verify_release(rdir, show_progress=show_progress, elsewhere=[a["name"] for a in given]))
    return out


def shard_plan(cfg: ReleaseConfig) -> ShardPlan:
    """The shards ``cfg`` splits its assets into (``cfg.shard_size`` must be set)."""
    from objathor_release.build.shards import parse_shard_size, plan_shards

    assert cfg.assets_dir and cfg.shard_size
    return plan_shards(cfg.assets_dir, parse_shard_size(cfg.shard_size), extra_excludes=cfg.excludes)


def shards_fresh(rdir: Path) -> bool:
    """Whether every shard the release directory's stamp lists is there, as it was built."""
    from objathor_release.build.tarball import read_sidecar

    try:
        with open_regular(rdir / SHARDS_STAMP) as fh:
            listed = [s["name"] for s in json.loads(fh.read())["shards"]]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return False
    return all(isinstance(n, str) and "/" not in n and read_sidecar(rdir / n) is not None for n in listed)


# --------------------------------------------------------------------------- publish


@dataclass
class Summary:
    version: str
    bucket: str
    prefix: str
    endpoint_url: str
    rows: list[dict[str, Any]]
    dry_run: bool
    upload_summary: str
    upload_table: str = ""

    def table(self) -> str:
        head = ("artifact", "size", "sha256", "parts", "status")
        body = [(r["name"], format_size(r["size"]), r["sha256"][:12], str(r["parts"]), r["status"])
                for r in self.rows]
        return format_table(head, body)

    def text(self) -> str:
        lines = [f"release {self.version} -> s3://{self.bucket}/{self.prefix}/ at {self.endpoint_url}",
                 self.upload_table if self.dry_run else self.table(), self.upload_summary]
        if not self.dry_run:
            lines.append("public URLs:")
            lines += [f"  {r['url']}" for r in self.rows]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "bucket": self.bucket, "prefix": self.prefix,
                "endpoint_url": self.endpoint_url, "dry_run": self.dry_run, "artifacts": self.rows}


def _public_url(cfg: ReleaseConfig, endpoint_url: str, bucket: str, key: str) -> str:
    if cfg.public_base_url:
        return f"{cfg.public_base_url.rstrip('/')}/{key}"
    return f"{endpoint_url.rstrip('/')}/{bucket}/{key}"


def connect(cfg: ReleaseConfig, *, remote: str | None = None, rclone_config: str | None = None,
            dry_run: bool = False) -> tuple[S3Target, Any, UploadConfig]:
    """The bucket ``cfg`` publishes to, a client for it (None for a dry run) and the upload settings."""
    from objathor_release.publish.client import make_client
    from objathor_release.s3.target import resolve_target

    config = upload_config(cfg)
    env = {**os.environ, **({"R2_ACCOUNT_ID": cfg.r2_account_id} if cfg.r2_account_id else {})}
    target = resolve_target(bucket=cfg.bucket, prefix=cfg.prefix or cfg.version,
                            endpoint_url=cfg.endpoint_url, profile=cfg.profile, remote=remote,
                            rclone_config=rclone_config, require_credentials=not dry_run, env=env)
    client = None if dry_run else make_client(target, max_pool_connections=config.connections + 8)
    return target, client, config


def publish(cfg: ReleaseConfig, *, remote: str | None = None, rclone_config: str | None = None,
            force: bool = False, dry_run: bool = False, show_progress: bool = True,
            verbose: bool = False, elsewhere: list[ShardEntry] | None = None) -> Summary:
    """Upload the built release (refusing to change a published version without ``force``),
    then HEAD every object against the manifest. Nothing is reported as published before that.

    ``elsewhere`` are the shards other machines uploaded (the finishing run of a distributed
    release): not uploaded here, checked on the server by their entries' ETags."""
    from objathor_release.build.manifest import load_manifest
    from objathor_release.publish.client import artifact_key
    from objathor_release.publish.remote import verify_remote
    from objathor_release.publish.upload import upload_release
    from objathor_release.s3.target import redact
    from objathor_release.trust.origin import sign_release

    rdir = release_dir_of(cfg)
    manifest = load_manifest(rdir)
    if manifest["version"] != cfg.version:
        raise InputError(f"{rdir}/manifest.json is for version {manifest['version']}, not {cfg.version}: "
                         "rebuild it or check VERSION")
    signed = sign_release(rdir)  # manifest.json.sig (or none), uploaded before manifest.json
    logger.info("%s", signed.message)
    target, client, config = connect(cfg, remote=remote, rclone_config=rclone_config, dry_run=dry_run)
    prefix = target.prefix or str(cfg.version)
    shards = {e.name: e for e in elsewhere or []}
    try:
        report = upload_release(client, rdir, target, config, force=force, dry_run=dry_run,
                                show_progress=show_progress, verbose=verbose, elsewhere=shards)
        etags = {**{n: e.etag for n, e in shards.items()}, **report.etags()}
        checks = {} if dry_run else {
            c.name: c for c in verify_remote(client, target.bucket, prefix, manifest, release_dir=rdir,
                                             expected_etags=etags, config=config)}
    except Exception as exc:
        exc.args = tuple(redact(str(a), target.secrets()) for a in exc.args)
        raise
    rows = []
    for e in shards.values():  # the shards' objects, checked above like the rest
        key = artifact_key(prefix, e.name, str(cfg.version))
        parts = int(e.etag.rpartition("-")[2]) if "-" in e.etag else 1
        rows.append({"name": e.name, "size": e.artifact["size"], "sha256": e.artifact["sha256"],
                     "parts": parts, "status": "uploaded by its shard's run" + (", verified" * (not dry_run)),
                     "etag": e.etag, "url": _public_url(cfg, target.endpoint_url, target.bucket, key)})
    for r in report.results:
        status = r.status if dry_run else (f"{r.status}, verified" if r.name in checks else r.status)
        rows.append({"name": r.name, "size": r.size, "sha256": r.sha256, "parts": r.parts,
                     "status": status, "etag": r.etag,
                     "url": _public_url(cfg, target.endpoint_url, target.bucket, r.key)})
    summary = Summary(str(cfg.version), target.bucket, prefix, target.endpoint_url, rows, dry_run,
                      report.summary(), report.table())
    if not dry_run:
        stamp = rdir / f".published-{target.bucket}"
        with atomic_write(stamp) as fh:
            fh.write((json.dumps(summary.to_json(), indent=2) + "\n").encode())
    return summary
