"""``release --executor ray``: every shard built and uploaded as a Ray task, then the finish here.

The driver plans the shards, submits one task per shard (each runs
:func:`~objathor_release.scale.distributed.release_shard`: it builds the shard
from the asset folders where the worker sees them, uploads it straight from the
worker and leaves its verified entry in the bucket), waits for them, then runs
:func:`~objathor_release.scale.distributed.finish_release`: the annotations are
validated in batches as Ray tasks and merged here, the rest built here, the
manifest merged and published last.

What Ray adds: placement and retries. A task whose worker dies is run again by
Ray (``max_retries``); one that fails with a network error is retried too
(``retry_exceptions``); a bad input fails at once. A re-run after the driver was
killed skips the shards whose entries are there (no build, no upload) and
resumes a half-uploaded shard from its parts, because every task does what
``--only-shard K`` does.

What it needs: the asset tree at the same path on every node (a shared
filesystem), ``pip install 'objathor-release[ray]'``, and the bucket's
credentials in every worker's environment (a local Ray, started here, inherits
this process's; nothing secret is passed through Ray). ``--ray-address`` (or
``$RAY_ADDRESS``) joins a running cluster; without it a local Ray is started
with one worker per core and stopped at the end.
"""

from __future__ import annotations

import collections
import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from objathor_release.errors import ReleaseError, TransferError, UsageError
from objathor_release.pipeline import shard_plan
from objathor_release.progress import progress
from objathor_release.publish.shards import ShardOutcome
from objathor_release.scale.distributed import Finished, absolute, finish_release, release_shard
from objathor_release.settings import ReleaseConfig

logger = logging.getLogger(__name__)

#: how often Ray runs a shard's task again after its worker died or the network failed
TASK_RETRIES = 3
#: batches of annotations being validated at once (each a task): enough to keep a cluster busy
IN_FLIGHT = 64


@dataclass
class RayRun:
    shards: list[ShardOutcome]
    finished: Finished


def _ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'objathor-release[ray]' (or --executor local)"
                         ) from None
    return ray


def _shard_task(cfg: ReleaseConfig, index: int, force: bool) -> ShardOutcome:
    """One shard on a Ray worker (quiet: the driver shows the progress over all of them)."""
    logging.basicConfig(level=logging.WARNING)
    return release_shard(cfg, index, force=force, show_progress=False)


def release_on_ray(cfg: ReleaseConfig, *, remote: str | None = None, rclone_config: str | None = None,
                   force: bool = False, show_progress: bool = True, verbose: bool = False) -> RayRun:
    """Every shard of ``cfg`` as a Ray task, then the finish on this machine."""
    if remote is not None:
        raise UsageError("--executor ray reads the bucket's settings from --bucket/--endpoint-url and the "
                         "environment on every worker: pass those instead of --remote")
    ray = _ray()
    cfg = absolute(cfg)
    plan = shard_plan(cfg)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=cfg.ray_address or None, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=verbose)
    try:
        task = ray.remote(num_cpus=1, max_retries=TASK_RETRIES, retry_exceptions=[TransferError])(_shard_task)
        began = time.monotonic()
        refs = {task.remote(cfg, k, force): k for k in range(len(plan.shards))}
        outcomes: dict[int, ShardOutcome] = {}
        with progress(len(refs), f"shards on Ray ({plan.summary()})", unit="shard",
                      enabled=show_progress) as bar:
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                for ref in ready:
                    outcomes[refs[ref]] = _result(ray, ref, f"shard {plan.shards[refs[ref]].name}")
                    bar.update(1)
        logger.info("%d shards on Ray in %.1f s", len(outcomes), time.monotonic() - began)
        finished = finish_release(cfg, rclone_config=rclone_config, force=force, show_progress=show_progress,
                                  verbose=verbose, batch_map=functools.partial(_ray_map, ray))
    finally:
        if started_here:
            ray.shutdown()
    return RayRun([outcomes[k] for k in sorted(outcomes)], finished)


def _ray_map(ray: Any, fn: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
    """``map(fn, items)`` as Ray tasks, :data:`IN_FLIGHT` at a time, the results in order."""
    task = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(_call)
    window: collections.deque[Any] = collections.deque()
    for item in items:
        window.append(task.remote(fn, item))
        if len(window) >= IN_FLIGHT:
            yield _result(ray, window.popleft(), "annotations")
    while window:
        yield _result(ray, window.popleft(), "annotations")


def _call(fn: Callable[[Any], Any], item: Any) -> Any:
    """``fn(item)`` on a Ray worker (Ray's tasks are plain functions; ``fn`` may be a partial)."""
    return fn(item)


def _result(ray: Any, ref: Any, name: str) -> Any:
    """The task's outcome; its error as the project's own one-line error, never Ray's traceback."""
    try:
        outcome = ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(exc.cause, ReleaseError) else None
        if cause is not None:
            raise type(cause)(f"{name} (on Ray): {cause}") from None
        raise TransferError(f"{name}: its Ray task failed ({type(exc.cause).__name__}: "
                            f"{str(exc.cause).splitlines()[0] if str(exc.cause) else ''}): run the release "
                            "again (finished shards are skipped)") from None
    except ray.exceptions.RayError as exc:
        raise TransferError(f"{name}: Ray could not run it ({type(exc).__name__}): check the cluster "
                            "and run the release again (finished shards are skipped)") from None
    return outcome
