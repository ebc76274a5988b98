"""Sharded asset tars: the plan, each shard against GNU tar, the union against the single tar, the manifest."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import tarfile
from pathlib import Path

import pytest

from devtools.sample import make_sample_dataset
from objathor_release.build.manifest import load_manifest, shard_sets, verify_release, write_manifest
from objathor_release.build.shards import (
    MIN_SHARD_SIZE,
    build_shard,
    build_shards,
    plan_shards,
    shard_command,
)
from objathor_release.build.tarball import build_tar
from objathor_release.errors import InputError, UsageError
from tests.conftest import run_cli
from tests.support.tarball_helpers import SEED_EXCLUDES, gnu_tar_available, make_messy_tree, sha256_of, write

MiB = 1024 * 1024
needs_gnu_tar = pytest.mark.skipif(not gnu_tar_available(), reason="GNU tar is not installed")


def make_tree(root: Path, n: int = 24, seed: int = 1) -> Path:
    """Asset folders of 100-400 KiB each (random, incompressible), with junk the excludes drop."""
    rng = random.Random(seed)
    for i in range(n):
        uid = hashlib.sha256(f"{seed}-{i}".encode()).hexdigest()[:32]
        write(root / uid / f"{uid}.pkl.gz", rng.randbytes(rng.randint(100, 400) * 1024))
        write(root / uid / "albedo.jpg", rng.randbytes(rng.randint(1, 5000)))
        write(root / uid / "annotations.json.gz", b"left out")
        write(root / uid / ".DS_Store", b"junk")
    return root


def messy_tree_with_weight(root: Path) -> Path:
    """The awkward tree of the tarball tests, with top-level folders heavy enough to need several shards."""
    make_messy_tree(root)
    for name in ("lod", "lod-2", "sizes", "modes", "D" * 200):
        write(root / name / "weight.bin", random.Random(name).randbytes(700 * 1024))
    return root


def extracted(tars: list[Path], into: Path) -> dict[str, tuple[str, int]]:
    """Extract ``tars`` one after another into ``into``; every file's sha256 and mode."""
    into.mkdir()
    for t in tars:
        with tarfile.open(t) as tf:
            tf.extractall(into, filter="tar")
    out = {}
    for dirpath, _, files in os.walk(into):
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(into))] = (sha256_of(p), p.stat().st_mode & 0o7777)
    return out


@needs_gnu_tar
@pytest.mark.parametrize("tree", ["messy", "assets"])
def test_every_shard_is_byte_identical_to_gnu_tar_over_its_folders(tmp_path: Path, tree: str) -> None:
    src = messy_tree_with_weight(tmp_path / "assets") if tree == "messy" else make_tree(tmp_path / "assets")
    plan = plan_shards(src, MIN_SHARD_SIZE + 128 * 1024)
    assert len(plan.shards) >= 3
    built = build_shards(plan, tmp_path / "out", source_date_epoch=1700000000, workers=2, show_progress=False)
    for shard, result in zip(plan.shards, built, strict=True):
        gnu = tmp_path / "gnu" / shard.name
        gnu.parent.mkdir(exist_ok=True)
        subprocess.run(shard_command(plan, shard.index, gnu, 1700000000), check=True, capture_output=True)
        assert sha256_of(gnu) == sha256_of(result.path) == result.sha256, shard.name
        assert result.size == shard.size == gnu.stat().st_size


def test_shards_hold_whole_folders_in_order_each_within_the_size(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "assets", n=40)
    limit = MIN_SHARD_SIZE + 300 * 1024
    plan = plan_shards(src, limit)
    folders = sorted(os.listdir(src))
    assert [u for s in plan.shards for u in s.units] == folders  # contiguous, in order, every folder once
    built = build_shards(plan, tmp_path / "out", show_progress=False, workers=1)
    for i, (shard, result) in enumerate(zip(plan.shards, built, strict=True)):
        assert result.path.stat().st_size == shard.size <= limit
        tops = {m["path"].split("/")[1] for m in result.members}
        assert tops == set(shard.units)  # boundaries only between asset folders
        if i + 1 < len(plan.shards):  # full: the next folder would not have fitted
            alone = plan_shards(src, limit)  # same plan again: deterministic
            assert alone.fingerprint == plan.fingerprint
            assert shard.size + plan.shards[i + 1].size - 2 * 512 > limit or len(plan.shards[i + 1].units) > 1


def test_one_asset_larger_than_the_size_gets_a_shard_of_its_own(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "assets", n=6)
    big = sorted(os.listdir(src))[2]
    write(src / big / "huge.bin", random.Random(3).randbytes(3 * MiB))
    plan = plan_shards(src, 2 * MiB)
    (alone,) = [s for s in plan.shards if big in s.units]
    assert alone.units == (big,) and alone.size > 2 * MiB
    assert all(s.size <= 2 * MiB for s in plan.shards if s is not alone)
    result = build_shard(plan, alone.index, tmp_path / "out")
    assert result.size == alone.size


def test_the_union_of_the_shards_is_the_single_tar(tmp_path: Path) -> None:
    src = messy_tree_with_weight(tmp_path / "assets")
    single = build_tar(src, tmp_path / "single" / "assets.tar", show_progress=False)
    plan = plan_shards(src, MIN_SHARD_SIZE + 64 * 1024)
    built = build_shards(plan, tmp_path / "out", show_progress=False, workers=2)
    union = [(m["path"], m["size"], m["sha256"]) for r in built for m in r.members]
    assert union == [(m["path"], m["size"], m["sha256"]) for m in single.members]
    assert extracted([r.path for r in built], tmp_path / "x-shards") == \
        extracted([single.path], tmp_path / "x-single")


def test_a_tree_changed_after_planning_is_refused_and_nothing_is_left(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "assets", n=12)
    plan = plan_shards(src, MIN_SHARD_SIZE)
    assert len(plan.shards) >= 3
    out = tmp_path / "out"
    out.mkdir()
    victim = plan.shards[1]
    write(src / victim.units[0] / "new.bin", b"added after the plan")
    with pytest.raises(InputError, match=f"changed while shard {victim.name}"):
        build_shard(plan, 1, out)
    gone = plan.shards[2].units[-1]
    os.rename(src / gone, tmp_path / "moved-away")
    with pytest.raises(InputError, match="no longer in the tree"):
        build_shard(plan, 2, out)
    assert os.listdir(out) == []


@pytest.mark.parametrize("size", ["0", "100K", "6T", "lots"])
def test_bad_shard_sizes_are_one_line(tmp_path: Path, size: str) -> None:
    src = make_tree(tmp_path / "assets", n=2)
    done = run_cli("plan", "--assets-dir", str(src), "--shard-size", size)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    with pytest.raises(UsageError):
        plan_shards(src, 1000)


def test_plan_json_is_what_the_shards_become(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "assets", n=20)
    done = run_cli("plan", "--assets-dir", str(src), "--shard-size", "1.5M", "--json")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    plan = plan_shards(src, int(1.5 * MiB))
    assert printed["fingerprint"] == plan.fingerprint
    assert [s["name"] for s in printed["shards"]] == plan.names
    assert printed["excludes"] == SEED_EXCLUDES


def test_the_manifest_lists_the_shards_in_order_and_verify_checks_them(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "assets", n=20)
    rdir = tmp_path / "release"
    done = run_cli("tar", "--assets-dir", str(src), "--output", str(rdir / "assets.tar"), "--shard-size", "1.5M")
    assert done.returncode == 0, done.stderr
    manifest = write_manifest(rdir, "2024_02_01", show_progress=False)
    names = sorted(n for n in os.listdir(rdir) if n.startswith("assets-"))
    assert manifest["shards"] == {"assets.tar": names} and len(names) >= 3
    assert manifest["excludes"] == SEED_EXCLUDES
    verify_release(rdir, members=True, show_progress=False)
    with open(rdir / names[1], "r+b") as fh:  # one byte of one shard
        fh.seek(700)
        fh.write(b"\x00" if fh.read(1) != b"\x00" else b"\x01")
    problems: list[str] = []
    with pytest.raises(Exception, match="1 problem"):
        verify_release(rdir, show_progress=False, on_problem=problems.append)
    assert names[1] in problems[0]


def test_one_tar_or_its_shards_never_both(tmp_path: Path) -> None:
    src = make_tree(tmp_path / "assets", n=20)
    rdir = tmp_path / "release"
    assert run_cli("tar", "--assets-dir", str(src), "--output", str(rdir / "assets.tar"),
                   "--shard-size", "1.5M").returncode == 0
    assert any(n.startswith("assets-") for n in os.listdir(rdir))
    done = run_cli("tar", "--assets-dir", str(src), "--output", str(rdir / "assets.tar"))
    assert done.returncode == 0, done.stderr
    assert sorted(n for n in os.listdir(rdir) if not n.startswith(".")) == ["assets.tar"]
    assert "removed" in done.stdout
    with pytest.raises(InputError, match="shard 1 of assets is missing"):
        shard_sets(["assets-00000.tar", "assets-00002.tar"])
    with pytest.raises(InputError, match="both in the release directory"):
        shard_sets(["assets.tar", "assets-00000.tar"])


@pytest.mark.parametrize("shards, why", [
    ({"assets.tar": ["assets-00000.tar", "assets-00009.tar"]}, "is not among the artifacts"),
    ({"assets.tar": ["assets-00000.tar", "assets-00000.tar"]}, "is listed twice"),
    ({"annotations.json.gz": ["assets-00000.tar"]}, "shards"),
    ({"assets.tar": "assets-00000.tar"}, "shards"),
    ({"assets.tar": ["../../etc-00000.tar"]}, "shards"),
])
def test_a_hostile_shards_field_is_refused_in_one_line(tmp_path: Path, shards: object, why: str) -> None:
    src = make_tree(tmp_path / "assets", n=20)
    rdir = tmp_path / "release"
    assert run_cli("tar", "--assets-dir", str(src), "--output", str(rdir / "assets.tar"),
                   "--shard-size", "1.5M").returncode == 0
    manifest = write_manifest(rdir, "2024_02_01", show_progress=False)
    manifest["shards"] = shards
    (rdir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=why) as err:
        load_manifest(rdir)
    assert "\n" not in str(err.value)


def test_a_sharded_release_is_up_to_date_on_a_second_run_and_rebuilt_when_a_shard_goes(tmp_path: Path) -> None:
    src = tmp_path / "assets"
    make_sample_dataset(src, 20, seed=2, asset_bytes=300 * 1024)
    rdir = tmp_path / "release"
    args = ("release", "--version", "2024_02_01", "--assets-dir", str(src), "--release-dir", str(rdir),
            "--bucket", "b", "--endpoint-url", "http://127.0.0.1:9", "--shard-size", "1.5M", "--dry-run", "-v")
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    assert load_manifest(rdir)["shards"]["assets.tar"][0] == "assets-00000.tar"
    second = run_cli(*args)
    assert "assets shards: up to date" in second.stderr
    (rdir / "assets-00001.tar").unlink()
    third = run_cli(*args)
    assert third.returncode == 0, third.stderr
    assert "assets shards: up to date" not in third.stderr
    verify_release(rdir, members=True, show_progress=False)
