"""A sharded release built by many jobs: ``release --only-shard K`` for each shard, then ``--finish``.

Every job reads the same asset tree (a shared filesystem, or the same checkout)
and plans the same shards from it (:func:`~objathor_release.pipeline.shard_plan`:
names and sizes only, so every job agrees without talking to the others). A
shard's job builds and uploads that shard alone and leaves its manifest entry in
the bucket (:mod:`objathor_release.publish.shards`); the finishing job builds
what is not sharded (annotations, features, the Holodeck base), merges the
entries into manifest.json, uploads the rest, checks every object on the server
and publishes manifest.json last. ``objathor-release plan --json`` tells a CI
workflow how many shard jobs to start; the Ray executor
(:mod:`objathor_release.scale.ray_executor`) runs the same two functions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from objathor_release.errors import UsageError
from objathor_release.pipeline import (
    Summary,
    build_local,
    connect,
    publish,
    release_dir_of,
    shard_plan,
)
from objathor_release.publish.shards import ShardEntry, ShardOutcome, publish_shard, read_entries
from objathor_release.settings import ReleaseConfig

if TYPE_CHECKING:
    from objathor_release.build.annotations import BatchMap

logger = logging.getLogger(__name__)

#: in the release dir: each shard's build and upload record, until its entry is written
WORK_DIR = ".shard-work"


def _sharded(cfg: ReleaseConfig, flag: str) -> None:
    if not cfg.shard_size:
        raise UsageError(f"{flag} is for a sharded release: pass --shard-size too (make: SHARD_SIZE=...), "
                         "the same in every job")


def release_shard(cfg: ReleaseConfig, index: int, *, remote: str | None = None,
                  rclone_config: str | None = None, force: bool = False, show_progress: bool = True,
                  verbose: bool = False) -> ShardOutcome:
    """Build shard ``index`` of ``cfg``'s plan, upload it, verify it and leave its entry in the bucket
    (skipped when its entry is already there, of this plan, over an unchanged object)."""
    from objathor_release.build.epoch import source_date_epoch
    from objathor_release.s3.target import redact

    _sharded(cfg, "--only-shard")
    plan = shard_plan(cfg)
    plan.shard(index)  # a shard the plan does not have: one line, before any request
    target, client, config = connect(cfg, remote=remote, rclone_config=rclone_config)
    try:
        return publish_shard(client, target, plan, index, str(cfg.version),
                             release_dir_of(cfg) / WORK_DIR, config,
                             epoch=source_date_epoch(cfg.source_date_epoch), force=force,
                             show_progress=show_progress, verbose=verbose)
    except Exception as exc:
        exc.args = tuple(redact(str(a), target.secrets()) for a in exc.args)
        raise


@dataclass
class Finished:
    """The finishing run: the release's summary and the shards it merged."""

    summary: Summary
    shards: list[ShardEntry]
    built: list[str]


def finish_release(cfg: ReleaseConfig, *, remote: str | None = None, rclone_config: str | None = None,
                   force: bool = False, show_progress: bool = True, verbose: bool = False,
                   batch_map: BatchMap | None = None) -> Finished:
    """Read every shard's entry (refusing a missing or stale one), build the rest, write the manifest
    with the shards in it, upload the rest and publish the manifest last, every object verified
    (``batch_map``: where the annotations' batches are validated, see ``prepare_annotations``)."""
    from objathor_release.build.epoch import source_date_epoch
    from objathor_release.s3.target import redact

    _sharded(cfg, "--finish")
    plan = shard_plan(cfg)
    target, client, _ = connect(cfg, remote=remote, rclone_config=rclone_config)
    try:
        entries = read_entries(client, target, plan, str(cfg.version),
                               source_date_epoch(cfg.source_date_epoch))
    except Exception as exc:
        exc.args = tuple(redact(str(a), target.secrets()) for a in exc.args)
        raise
    logger.info("all %d shards are uploaded and verified: finishing %s", len(entries), cfg.version)
    build = build_local(cfg, show_progress=show_progress, verbose=verbose,
                        elsewhere=[e.artifact for e in entries], batch_map=batch_map)
    summary = publish(cfg, remote=remote, rclone_config=rclone_config, force=force,
                      show_progress=show_progress, verbose=verbose, elsewhere=entries)
    return Finished(summary, entries, build.built)


def absolute(cfg: ReleaseConfig) -> ReleaseConfig:
    """``cfg`` with its folders absolute, for workers whose working directory is not this one's."""
    import dataclasses

    def a(p: str | None) -> str | None:
        return str(Path(p).resolve()) if p else p

    return dataclasses.replace(cfg, assets_dir=a(cfg.assets_dir), features_dir=a(cfg.features_dir),
                               holodeck_dir=a(cfg.holodeck_dir),
                               release_dir=str(release_dir_of(cfg).resolve()))
