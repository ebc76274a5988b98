"""manifest.json / SHA256SUMS against independently computed values, and verify catching damage."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest

import objathor_release
import objathor_release.build.manifest as manifest_mod
from devtools.sample import make_sample_dataset
from objathor_release.build.manifest import (
    _member_problem,
    list_artifacts,
    load_manifest,
    manifest_problems,
    verify_release,
    write_manifest,
)
from objathor_release.build.tarball import build_tar, sidecar_path
from objathor_release.errors import ChecksumError, InputError
from tests.support.tarball_helpers import (
    SEED_EXCLUDES,
    gnu_tar,
    gnu_tar_available,
    s3_etag_fields,
    sha256_of,
    tarfile_members,
    write,
)

REPO = Path(__file__).resolve().parent.parent
VERSION = "2024_02_01"
needs_gnu_tar = pytest.mark.skipif(not gnu_tar_available(), reason="GNU tar is not installed")


@pytest.fixture
def release(tmp_path: Path) -> Path:
    """A release dir: assets.tar (ours, with sidecar), features.tar, annotations, a nested holodeck tar."""
    make_sample_dataset(tmp_path / "assets", 6, seed=2, asset_bytes=12 * 1024,
                        features_dir=tmp_path / "features")
    rel = tmp_path / "release"
    build_tar(tmp_path / "assets", rel / "assets.tar", show_progress=False, source_date_epoch=7)
    build_tar(tmp_path / "features", rel / "features.tar", show_progress=False)
    write(rel / "annotations.json.gz", os.urandom(999))
    base = write(tmp_path / "2023_09_23" / "objaverse_holodeck" / "data.json", '{"x": 1}').parent.parent
    gnu_tar(base, rel / "holodeck" / "2023_09_23.tar", [])  # made by another tool: no sidecar
    write(rel / ".upload-state" / "assets.tar.json", "{}")  # hidden: not an artifact
    return rel


def independent(rel: Path, name: str) -> dict[str, Any]:
    """What the manifest must say about one artifact, computed without the package."""
    path = rel / name
    members = tarfile_members(path) if name.endswith(".tar") else []
    return {"name": name, "size": path.stat().st_size, "sha256": sha256_of(path), "members": members,
            **s3_etag_fields(path)}


# --------------------------------------------------------------------------- writing


def test_manifest_values_match_independent_hashes(release: Path, cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("manifest", "--release-dir", str(release), "--version", VERSION, "-q")
    assert r.returncode == 0, r.stderr
    m = json.loads((release / "manifest.json").read_text())
    n_members = sum(len(a["members"]) for a in m["artifacts"])
    assert r.stdout == f"wrote {release}/manifest.json and SHA256SUMS: 4 artifacts, {n_members} tar members\n"
    assert r.stderr == ""
    names = ["annotations.json.gz", "assets.tar", "features.tar", "holodeck/2023_09_23.tar"]
    assert [a["name"] for a in m["artifacts"]] == names
    for art in m["artifacts"]:
        want = independent(release, art["name"])
        assert {k: art[k] for k in want} == want, art["name"]
    assets = m["artifacts"][1]
    assert all(p["path"].startswith("assets/") for p in assets["members"])
    assert {p["path"].rsplit("/", 1)[-1] for p in assets["members"]} >= {"albedo.jpg", "normal.jpg"}
    assert m["version"] == VERSION and m["tool_version"] == objathor_release.__version__
    assert m["excludes"] == SEED_EXCLUDES
    assert "created" not in m  # no wall-clock time without SOURCE_DATE_EPOCH
    schema = json.loads((REPO / "schemas/manifest.schema.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(m)


def test_sha256sum_check_passes(release: Path) -> None:
    write_manifest(release, VERSION, show_progress=False)
    out = subprocess.run(["sha256sum", "-c", "--strict", "SHA256SUMS"], cwd=release, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count(": OK") == 4
    lines = (release / "SHA256SUMS").read_text().splitlines()
    assert lines == sorted(lines, key=lambda s: s.split("  ", 1)[1])


def test_manifest_is_deterministic(release: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    write_manifest(release, VERSION, show_progress=False)
    first = (release / "manifest.json").read_bytes(), (release / "SHA256SUMS").read_bytes()
    sidecar_path(release / "assets.tar").unlink()  # the second run reads the tar instead: same result
    write_manifest(release, VERSION, show_progress=False)
    assert ((release / "manifest.json").read_bytes(), (release / "SHA256SUMS").read_bytes()) == first
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert write_manifest(release, VERSION, show_progress=False)["created"] == "2023-11-14T22:13:20Z"


def test_sidecar_spares_reading_the_tar_until_the_tar_changes(release: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    read: list[str] = []
    real_scan = manifest_mod.scan_tar

    def spy(path: Path, **kw: Any) -> Any:
        read.append(Path(path).name)
        return real_scan(path, **kw)

    monkeypatch.setattr(manifest_mod, "scan_tar", spy)
    write_manifest(release, VERSION, show_progress=False)
    assert read == ["2023_09_23.tar"]  # assets.tar and features.tar came from their sidecars
    read.clear()
    tar = release / "assets.tar"
    data = bytearray(tar.read_bytes())
    data[-1] = 1  # in the zero padding: still a valid tar, different bytes
    tar.write_bytes(bytes(data))
    m = write_manifest(release, VERSION, show_progress=False)
    assert read == ["assets.tar", "2023_09_23.tar"]
    assert m["artifacts"][1]["sha256"] == hashlib.sha256(data).hexdigest()


def test_artifacts_skip_hidden_files_and_the_manifest_itself(release: Path) -> None:
    write_manifest(release, VERSION, show_progress=False)
    write(release / ".DS_Store", "junk")
    write(release / "manifest.json.sig", "signature bytes")  # publish's signature is bookkeeping too
    names = list_artifacts(release)
    assert names == ["annotations.json.gz", "assets.tar", "features.tar", "holodeck/2023_09_23.tar"]
    verify_release(release, show_progress=False)  # raises on an "extra file": the signature is none


def test_symlinked_artifact_and_empty_release_are_refused(tmp_path: Path, release: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no artifacts"):
        write_manifest(tmp_path / "empty", VERSION, show_progress=False)
    (release / "link.tar").symlink_to(release / "features.tar")
    with pytest.raises(InputError, match="link.tar: is a symlink"):
        write_manifest(release, VERSION, show_progress=False)


def test_manifest_cli_refuses_a_bad_version(release: Path, cli) -> None:  # type: ignore[no-untyped-def]
    r = cli("manifest", "--release-dir", str(release), "--version", "2024-02-01")
    assert r.returncode == 2 and "YYYY_MM_DD" in r.stderr
    assert not (release / "manifest.json").exists()


# --------------------------------------------------------------------------- reading


def test_load_manifest_accepts_a_minimal_manifest(tmp_path: Path) -> None:
    minimal = {"version": VERSION, "tool_version": "9", "excludes": [], "artifacts": [
        {"name": "assets.tar", "size": 10240, "sha256": "a" * 64,
         "members": [{"path": "assets/x", "size": 1, "sha256": "b" * 64, "offset": 512}]}]}
    write(tmp_path / "manifest.json", json.dumps(minimal))
    assert load_manifest(tmp_path) == minimal
    assert load_manifest(tmp_path / "manifest.json") == minimal


@pytest.mark.parametrize(("change", "field"), [
    (lambda m: m.pop("version"), "'version' is a required property"),
    (lambda m: m.update(version="2024-02-01"), "$.version"),
    (lambda m: m["artifacts"][1].update(sha256="ABC"), "$.artifacts[1].sha256"),
    (lambda m: m["artifacts"][1].update(name="../escape.tar"), "$.artifacts[1].name"),
    (lambda m: m["artifacts"][1]["members"][2].update(sha256="zz"), "$.artifacts[1].members[2].sha256"),
    (lambda m: m["artifacts"][1]["members"][0].pop("offset"), "'offset' is a required property"),
    (lambda m: m["artifacts"][1]["members"][0].update(offset=100), "$.artifacts[1].members[0].offset"),
])
def test_load_manifest_names_the_bad_field(release: Path, change: Any, field: str) -> None:
    m = write_manifest(release, VERSION, show_progress=False)
    change(m)
    write(release / "manifest.json", json.dumps(m))
    with pytest.raises(InputError) as err:
        load_manifest(release)
    assert str(release / "manifest.json") in str(err.value) and field in str(err.value)


def test_load_manifest_names_a_missing_or_broken_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="manifest.json: not found"):
        load_manifest(tmp_path)
    write(tmp_path / "manifest.json", "{not json")
    with pytest.raises(InputError, match="manifest.json: not valid JSON"):
        load_manifest(tmp_path)


@pytest.mark.parametrize("member", [
    {"path": "a", "size": 1, "sha256": "0" * 64, "offset": 512},
    {"path": "a", "size": 1, "sha256": "0" * 64, "offset": 512, "extra": True},
    {"path": "", "size": 1, "sha256": "0" * 64, "offset": 512},
    {"path": "a", "size": -1, "sha256": "0" * 64, "offset": 512},
    {"path": "a", "size": True, "sha256": "0" * 64, "offset": 512},
    {"path": "a", "size": 1.5, "sha256": "0" * 64, "offset": 512},
    {"path": "a", "size": 1, "sha256": "0" * 63, "offset": 512},
    {"path": "a", "size": 1, "sha256": "0" * 64 + "\n", "offset": 512},
    {"path": "a", "size": 1, "sha256": "A" * 64, "offset": 512},
    {"path": "a", "size": 1, "sha256": "0" * 64, "offset": 0},
    {"path": "a", "size": 1, "sha256": "0" * 64, "offset": 513},
    {"path": "a", "size": 1, "sha256": "0" * 64},
    {"path": 5, "size": 1, "sha256": "0" * 64, "offset": 512},
    ["not", "an", "object"],
])
def test_hand_check_of_members_agrees_with_the_schema(member: Any) -> None:
    schema = json.loads((REPO / "schemas/manifest.schema.json").read_text())
    full = jsonschema.Draft202012Validator(schema)
    doc = {"version": VERSION, "tool_version": "1", "excludes": [],
           "artifacts": [{"name": "a.tar", "size": 1, "sha256": "0" * 64, "members": [member]}]}
    assert full.is_valid(doc) == (_member_problem(member, "$") is None) == (manifest_problems(doc) == [])


# --------------------------------------------------------------------------- verify


def _verify(cli, release: Path, *extra: str):  # type: ignore[no-untyped-def]
    return cli("verify", "--release-dir", str(release), "-q", *extra)


def test_verify_passes_on_a_good_release(release: Path, cli) -> None:  # type: ignore[no-untyped-def]
    write_manifest(release, VERSION, show_progress=False)
    for extra in ((), ("--members",)):
        r = _verify(cli, release, *extra)
        assert r.returncode == 0, r.stderr
        assert (r.stdout, r.stderr) == (f"{release}: every artifact matches manifest.json\n", "")


def test_verify_catches_a_flipped_byte(release: Path, cli) -> None:  # type: ignore[no-untyped-def]
    m = write_manifest(release, VERSION, show_progress=False)
    member = m["artifacts"][1]["members"][5]
    tar = release / "assets.tar"
    with open(tar, "r+b") as fh:
        fh.seek(member["offset"] + 3)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0x01]))
    r = _verify(cli, release)
    assert r.returncode == 1
    assert f"{tar}: sha256 " in r.stderr and "1 problem " in r.stderr
    r = _verify(cli, release, "--members")
    assert r.returncode == 1
    assert f"assets.tar: member {member['path']}: sha256 " in r.stderr and "2 problems" in r.stderr
    assert "Traceback" not in r.stderr


def test_verify_names_every_problem_at_once(release: Path, cli) -> None:  # type: ignore[no-untyped-def]
    write_manifest(release, VERSION, show_progress=False)
    features = release / "features.tar"
    features.write_bytes(features.read_bytes()[:-4096])  # truncated
    (release / "annotations.json.gz").unlink()  # missing
    write(release / "extra.bin", "not in the manifest")  # extra
    r = _verify(cli, release)
    assert r.returncode == 1
    problems = r.stderr.strip().splitlines()
    assert problems[:3] == [
        f"{release}/annotations.json.gz: missing (listed in manifest.json)",
        f"{release}/extra.bin: extra file, not in manifest.json",
        f"{features}: size {features.stat().st_size}, manifest says {features.stat().st_size + 4096} "
        "(truncated or replaced)",
    ]
    assert problems[-1].startswith("objathor-release: error: ") and "3 problems" in problems[-1]


def test_verify_in_process_raises_checksum_error(release: Path, capsys: pytest.CaptureFixture[str],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The library prints nothing: each problem goes to ``on_problem``, else to the module's logger."""
    write_manifest(release, VERSION, show_progress=False)
    (release / "SHA256SUMS").write_text("0" * 64 + "  assets.tar\n")
    with caplog.at_level("WARNING", logger="objathor_release.build.manifest"), \
            pytest.raises(ChecksumError, match="1 problem "):
        verify_release(release, show_progress=False)
    assert [r.getMessage() for r in caplog.records] == [f"{release}/SHA256SUMS: does not match manifest.json"]
    seen: list[str] = []
    caplog.clear()
    with pytest.raises(ChecksumError, match="1 problem "):
        verify_release(release, show_progress=False, on_problem=seen.append)
    assert seen == [f"{release}/SHA256SUMS: does not match manifest.json"] and not caplog.records
    assert capsys.readouterr() == ("", "")


def test_verify_without_a_manifest(tmp_path: Path, cli) -> None:  # type: ignore[no-untyped-def]
    write(tmp_path / "rel" / "assets.tar", b"x")
    r = _verify(cli, tmp_path / "rel")
    assert r.returncode == 2 and "manifest.json: not found" in r.stderr


@needs_gnu_tar
def test_tar_manifest_verify_through_the_cli(tmp_path: Path, sample_assets: Path,
                                             cli) -> None:  # type: ignore[no-untyped-def]
    rel = tmp_path / "rel"
    r = cli("tar", "--assets-dir", str(sample_assets), "--output", str(rel / "assets.tar"), "-q")
    assert r.returncode == 0, r.stderr
    write(rel / "annotations.json.gz", b"\x1f\x8b")
    assert cli("manifest", "--release-dir", str(rel), "--version", VERSION, "-q").returncode == 0
    assert _verify(cli, rel, "--members").returncode == 0
    assert (rel / "assets.tar").read_bytes() == gnu_tar(sample_assets, tmp_path / "gnu.tar").read_bytes()


def test_manifest_records_the_exclude_list_in_force(tmp_path: Path, sample_assets: Path) -> None:
    rel = tmp_path / "rel"
    build_tar(sample_assets, rel / "assets.tar", extra_excludes=["normal.jpg"], show_progress=False)
    m = write_manifest(rel, VERSION, show_progress=False)
    assert m["excludes"] == [*SEED_EXCLUDES, "normal.jpg"]
    assert not any(p["path"].endswith("/normal.jpg") for p in m["artifacts"][0]["members"])
    assert write_manifest(rel, VERSION, show_progress=False, excludes=["x"])["excludes"] == ["x"]


@needs_gnu_tar
def test_the_holodeck_base_is_listed_but_its_empty_exclude_list_is_not_the_releases(
        tmp_path: Path, sample_assets: Path) -> None:
    rel = tmp_path / "rel"
    base = write(tmp_path / "2023_09_23" / "thor_object_data" / "annotations.json.gz", b"\x1f\x8b").parent.parent
    build_tar(base, rel / "holodeck.tar", default_excludes=False, show_progress=False)
    gnu_tar(sample_assets, rel / "assets.tar")  # no sidecar: the list is not known from it
    m = write_manifest(rel, VERSION, show_progress=False)
    assert m["excludes"] == SEED_EXCLUDES
    holodeck = next(a for a in m["artifacts"] if a["name"] == "holodeck.tar")
    assert holodeck == independent(rel, "holodeck.tar")
    assert [p["path"] for p in holodeck["members"]] == ["2023_09_23/thor_object_data/annotations.json.gz"]


def test_rendering_parses_back_to_the_same_manifest() -> None:
    from objathor_release.build.manifest import render_manifest

    odd = ['assets/a"b/c\\d.jpg', "assets/é/ü\n.jpg", "assets/x\u2028y", "assets/plain.jpg"]
    manifest = {"version": VERSION, "tool_version": "1", "excludes": ["*.lock"], "extra": {"b": [1, 2]},
                "artifacts": [
                    {"name": "a.tar", "size": 10240, "sha256": "a" * 64,
                     "members": [{"path": p, "size": i, "sha256": "b" * 64, "offset": 512 * (i + 1)}
                                 for i, p in enumerate(odd)]},
                    {"name": "b.txt", "size": 1, "sha256": "c" * 64, "members": []}]}
    text = render_manifest(manifest)
    assert json.loads(text) == manifest
    lines = text.split("\n")
    assert len([line for line in lines if '"offset"' in line]) == len(odd)  # a newline in a path is escaped
