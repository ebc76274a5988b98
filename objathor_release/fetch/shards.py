"""A sharded assets tar: every shard (or a slice of them) into the one assets folder, several at once.

A sharded release serves ``assets-00000.tar``, ``assets-00001.tar``, ... instead
of ``assets.tar``; manifest.json lists each shard as an artifact and gives their
order under ``"shards": {"assets.tar": [...]}``. Each shard holds a run of whole
asset folders (``assets/<uid>/...``, without an ``assets/`` entry of its own),
so extracting every shard into one folder gives the tree the single tar gives.

The cut: the shard list checked (:func:`shard_plan`, before any byte is
fetched), which shards a ``--slice K/N`` takes, and the pool that fetches them.
Each shard is one tar part of its own (:meth:`.layout.Part.shard`): streamed
through the safe, hashing extractor by :func:`.tars.fetch_tar` into its own
staging folder, checked member by member and as a whole, then its asset folders
are moved into ``assets/`` one by one (:func:`.tars.fetch_tar`'s merge), and
its ``.done`` marker written. A re-run skips the shards marked done, and resumes
an interrupted shard after its last good member (:mod:`.resume`). ``--uids``
fetches each asset from the shard that holds it (:func:`.uids.fetch_uids`).

The caller (:mod:`.download`) holds the assets part's lock.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

from objathor_release.errors import InputError, UsageError
from objathor_release.fetch.extract import member_parts
from objathor_release.fetch.job import Job, PartResult, Stopped
from objathor_release.fetch.layout import Part, asset_folders
from objathor_release.fetch.markers import read_done
from objathor_release.fetch.tars import fetch_tar
from objathor_release.fetch.uids import fetch_uids
from objathor_release.progress import progress

#: shards streamed at once; they share the connections (``--connections``) and the stream buffer
POOL = 3
LOGICAL = "assets.tar"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.tar")
_SLICE = re.compile(r"([0-9]{1,9})/([0-9]{1,9})")  # bounded: int() refuses over 4300 digits (a traceback)


@dataclass(frozen=True)
class Slice:
    """``--slice K/N``: the shards whose index ``i`` has ``i % N == K``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise UsageError(f"--slice {self.index}/{self.count}: K/N needs 0 <= K < N (e.g. 0/4 ... 3/4)")

    def holds(self, shard: int) -> bool:
        return shard % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_slice(text: str) -> Slice:
    """``"K/N"`` as a :class:`Slice`; a UsageError naming the flag otherwise."""
    match = _SLICE.fullmatch(text.strip())
    if match is None:
        raise UsageError(f"--slice {text!r} is not K/N (two whole numbers, 0 <= K < N, e.g. 0/4)")
    return Slice(int(match.group(1)), int(match.group(2)))


@dataclass(frozen=True)
class ShardPlan:
    """The shards of assets.tar in order, and which shard holds each asset folder."""

    artifacts: list[Mapping[str, Any]]
    owner: dict[str, int]


def shard_plan(manifest: Mapping[str, Any] | None, url: str) -> ShardPlan | None:
    """The checked shard list of ``manifest`` (None: the release is one assets.tar, or has no manifest).

    Refused in one line, before anything is fetched: a shard not among the artifacts, listed twice or
    with a name that is not a plain ``*.tar``; assets.tar listed beside its shards; a member outside
    ``assets/<uid>/``; an asset folder in two shards."""
    if manifest is None or "shards" not in manifest:
        return None

    def bad(why: str) -> InputError:
        return InputError(f"{url}: {why}: the release's manifest is malformed; tell its publisher")

    shards = manifest["shards"]
    if not isinstance(shards, dict) or set(shards) != {LOGICAL}:
        raise bad(f'field shards must be {{"{LOGICAL}": [its shard names in order]}}')
    names = shards[LOGICAL]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise bad(f"field shards.{LOGICAL} is not a list of shard names")
    by_name = {a["name"]: a for a in manifest["artifacts"]}
    if LOGICAL in by_name:
        raise bad(f"it lists {LOGICAL} and also its shards under field shards")
    arts: list[Mapping[str, Any]] = []
    owner: dict[str, int] = {}
    seen: set[str] = set()
    for i, name in enumerate(names):
        if not _NAME.fullmatch(name) or name == LOGICAL:
            raise bad(f"shard {name!r} is not a plain *.tar file name")
        if name in seen:
            raise bad(f"shard {name} is listed twice in field shards.{LOGICAL}")
        seen.add(name)
        if name not in by_name:
            raise bad(f"shard {name} is listed in field shards.{LOGICAL} but not among its artifacts")
        art = by_name[name]
        for m in art["members"]:
            parts = member_parts(m["path"])
            if len(parts) < 3 or parts[0] != "assets":
                raise bad(f"member {m['path']!r} of shard {name} is not inside assets/<uid>/")
            first = owner.setdefault(parts[1], i)
            if first != i:
                raise bad(f"asset {parts[1]} is in two shards, {names[first]} and {name}")
        arts.append(art)
    return ShardPlan(arts, owner)


def fetch_shards(job: Job, assets: Part, plan: ShardPlan, chosen: Slice | None,
                 uids: Sequence[str] | None) -> PartResult:
    """Fetch the shards ``chosen`` takes (all by default), or only the assets ``uids``, into ``assets``."""
    parts = [Part.shard(assets, job.source, art) for art in plan.artifacts]
    if uids is not None:
        return _fetch_uids(job, assets, parts, plan, uids)
    picked = [p for i, p in enumerate(parts) if chosen is None or chosen.holds(i)]
    of = f"slice {chosen}: {len(picked)} of {len(parts)} shards" if chosen else f"{len(parts)} shards"
    if not picked:
        return PartResult(assets.what, assets.target, "not in this slice", True,
                          note=f"slice {chosen} holds none of the {len(parts)} shards of {job.version}: "
                          "nothing to fetch")
    todo = [p for p in picked if not _done(job, p)]
    if not todo:
        return PartResult(assets.what, assets.target, "already there", True, note=f"{of}, all there")
    # what the shards still to fetch need on disk (an interrupted one needs less: its own check says)
    job.check_space(todo[0].url, sum(int((p.artifact or {})["size"]) for p in todo))
    results = _run_pool(job, todo)
    fetched = [r for r in results if r.status == "downloaded"]  # the others were checked in place
    status = "downloaded" if fetched else "already there"
    return PartResult(assets.what, assets.target, status, all(r.verified for r in results),
                      sum(r.bytes for r in results),
                      note=f"{of}: {len(fetched)} fetched, {len(picked) - len(fetched)} already there")


def _done(job: Job, part: Part) -> bool:
    """The shard's marker is there, matches manifest.json, and its asset folders are all in place."""
    if read_done(part, job.note) is None:
        return False
    return all((part.target / uid).is_dir() for uid in asset_folders(part.artifact or {}))


def _run_pool(job: Job, todo: list[Part]) -> list[PartResult]:
    """Up to :data:`POOL` shards at once, each through the parallel ranged engine with its share of the
    connections; the first failure stops the others (their staging is kept, to resume) and is raised."""
    workers = max(1, min(POOL, len(todo), job.http.config.connections))
    one = dataclasses.replace(job, share=workers, show_progress=job.show_progress and workers == 1)
    total = sum(int((p.artifact or {})["size"]) for p in todo)
    results: list[PartResult] = []
    with progress(total, f"download {len(todo)} shards", enabled=job.show_progress and workers > 1) as bar:
        pool = ThreadPoolExecutor(workers, thread_name_prefix="shard")
        futures = {pool.submit(_one, one, p): p for p in todo}
        try:
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                for future in finished:
                    results.append(future.result())  # raises the shard's error: the finally stops the rest
                    bar.update(int((futures[future].artifact or {})["size"]))
        except BaseException as exc:
            job.cancel.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise _first_error(exc, futures) from None
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return results


def _one(job: Job, part: Part) -> PartResult:
    """One shard, unless another has failed since the pool took it up."""
    if job.cancel.is_set():
        raise Stopped(f"{part.url}: not started, as another part of this download failed")
    return fetch_tar(job, part)


def _first_error(exc: BaseException, futures: Mapping[Any, Part]) -> BaseException:
    """The error to report: the one that stopped the others, not a shard's "stopped" that followed."""
    if not isinstance(exc, Stopped):
        return exc
    for future in futures:
        if future.done() and not future.cancelled():
            err = future.exception()
            if err is not None and not isinstance(err, Stopped):
                return err
    return exc


def _fetch_uids(job: Job, assets: Part, parts: list[Part], plan: ShardPlan,
                uids: Sequence[str]) -> PartResult:
    """``--uids`` across shards: each asset from the shard that holds it, by its members' offsets there."""
    unknown = [u for u in uids if u not in plan.owner]
    if unknown:
        raise UsageError(f"{len(unknown)} uid(s) are not in any shard of version {job.version}'s assets, "
                         f"e.g. {', '.join(unknown[:5])}: check --uids/--uids-file")
    groups: dict[int, list[str]] = {}
    for uid in uids:
        groups.setdefault(plan.owner[uid], []).append(uid)
    results = [fetch_uids(job, parts[i], group) for i, group in sorted(groups.items())]
    fetched = sum(r.bytes for r in results)
    status = "downloaded" if any(r.status == "downloaded" for r in results) else "already there"
    return PartResult(assets.what, assets.target, status, all(r.verified for r in results), fetched,
                      note=f"{len(uids)} asset(s) from {len(groups)} of {len(parts)} shards")
