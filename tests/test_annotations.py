"""prepare-annotations: the good path, determinism, both input forms, and every bad input."""

from __future__ import annotations

import copy
import gzip
import io
import json
import os
import random
import shutil
import tarfile
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from devtools.sample import make_annotation, make_sample_dataset
from objathor_release.build.annotations import load_annotations, prepare_annotations
from objathor_release.build.validation import schema_errors, schema_validator
from objathor_release.errors import InputError
from objathor_release.settings import load_schema

UIDS_SEED = 1


def uids_of(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def expected_merge(root: Path) -> dict[str, Any]:
    """The merge computed independently from the files."""
    out = {}
    for uid in uids_of(root):
        ann = json.loads(gzip.decompress((root / uid / "annotations.json.gz").read_bytes()))
        meta_path = root / uid / "thor_metadata.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        meta.pop("objectMetadata", None)
        ann["thor_metadata"] = meta
        out[uid] = ann
    return out


def write_ann(root: Path, uid: str, ann: Any) -> None:
    (root / uid / "annotations.json.gz").write_bytes(gzip.compress(json.dumps(ann).encode()))


# --------------------------------------------------------------------------- good path


def test_merge_matches_the_files_and_the_schema(sample_assets: Path, tmp_path: Path, cli) -> None:
    out = tmp_path / "rel" / "annotations.json.gz"
    result = cli("prepare-annotations", "--save-dir", str(sample_assets), "--output-file", str(out))
    assert result.returncode == 0, result.stderr
    assert f"wrote 12 annotations to {out}" in result.stdout
    merged = load_annotations(out)
    assert merged == expected_merge(sample_assets)
    assert list(merged) == sorted(merged)
    assert schema_errors(merged, "annotations") == []
    first = merged[uids_of(sample_assets)[0]]
    assert "objectMetadata" not in first["thor_metadata"]
    assert "boundingBox" in first["thor_metadata"]["assetMetadata"]
    # Only the output file is left in the directory: no temporaries.
    assert [p.name for p in out.parent.iterdir()] == ["annotations.json.gz"]


def test_assets_dir_alias_and_progress_lines(sample_assets: Path, tmp_path: Path, cli) -> None:
    out = tmp_path / "a.json.gz"
    result = cli("prepare-annotations", "--assets-dir", str(sample_assets), "--output-file", str(out))
    assert result.returncode == 0, result.stderr
    assert "annotations: 100% 12/12 assets" in result.stderr  # plain lines when not on a terminal


def test_missing_thor_metadata_gives_empty_object(sample_assets: Path, tmp_path: Path) -> None:
    uid = uids_of(sample_assets)[0]
    (sample_assets / uid / "thor_metadata.json").unlink()
    out = tmp_path / "a.json.gz"
    prepare_annotations(sample_assets, out, show_progress=False)
    assert load_annotations(out)[uid]["thor_metadata"] == {}


def test_numbers_as_strings_and_extra_fields_are_accepted(sample_assets: Path, tmp_path: Path) -> None:
    uid = uids_of(sample_assets)[0]
    ann = json.loads(gzip.decompress((sample_assets / uid / "annotations.json.gz").read_bytes()))
    ann.update(height="12.5", width="3", new_field_from_the_future={"x": 1})
    write_ann(sample_assets, uid, ann)
    out = tmp_path / "a.json.gz"
    prepare_annotations(sample_assets, out, show_progress=False)
    got = load_annotations(out)[uid]
    assert got["height"] == "12.5" and got["new_field_from_the_future"] == {"x": 1}


def test_parallel_and_in_process_give_the_same_bytes(tmp_path: Path) -> None:
    root = tmp_path / "assets"
    make_sample_dataset(root, 300, seed=5, asset_bytes=256)  # above the in-process threshold
    prepare_annotations(root, tmp_path / "one.json.gz", workers=1, show_progress=False)
    prepare_annotations(root, tmp_path / "two.json.gz", workers=2, show_progress=False)
    assert (tmp_path / "one.json.gz").read_bytes() == (tmp_path / "two.json.gz").read_bytes()
    assert len(load_annotations(tmp_path / "two.json.gz")) == 300


# --------------------------------------------------------------------------- determinism


def copy_tree_differently(src: Path, dst: Path) -> None:
    """Copy with reversed creation order and scrambled mtimes."""
    rng = random.Random(99)
    dst.mkdir()
    for entry in sorted(src.iterdir(), reverse=True):
        if entry.is_dir():
            (dst / entry.name).mkdir()
            for f in sorted(entry.iterdir(), reverse=True):
                shutil.copyfile(f, dst / entry.name / f.name)
                t = rng.randrange(10**9)
                os.utime(dst / entry.name / f.name, (t, t))
        else:
            shutil.copyfile(entry, dst / entry.name)


def test_output_is_byte_identical_across_runs_and_copies(sample_assets: Path, tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.json.gz", tmp_path / "b.json.gz", tmp_path / "c.json.gz"
    prepare_annotations(sample_assets, a, show_progress=False)
    prepare_annotations(sample_assets, b, show_progress=False)
    copy_tree_differently(sample_assets, tmp_path / "copy")
    prepare_annotations(tmp_path / "copy", c, show_progress=False)
    assert a.read_bytes() == b.read_bytes() == c.read_bytes()
    header = a.read_bytes()[:10]
    assert header[:3] == b"\x1f\x8b\x08"
    assert header[3] & 0x08 == 0, "no file name in the gzip header"
    assert header[4:8] == b"\x00\x00\x00\x00", "gzip mtime is 0"


# --------------------------------------------------------------------------- per-asset .tar form


def to_tar_form(root: Path, uid: str) -> None:
    with tarfile.open(root / f"{uid}.tar", "w") as tf:
        for name in ("annotations.json.gz", "thor_metadata.json"):
            tf.add(root / uid / name, arcname=f"{uid}/{name}")
    shutil.rmtree(root / uid)


def test_per_asset_tar_form_gives_the_same_output(sample_assets: Path, tmp_path: Path) -> None:
    folders = tmp_path / "folders.json.gz"
    prepare_annotations(sample_assets, folders, show_progress=False)
    for uid in uids_of(sample_assets)[:5]:
        to_tar_form(sample_assets, uid)
    assert len(list(sample_assets.glob("*.tar"))) == 5
    tars = tmp_path / "tars.json.gz"
    prepare_annotations(sample_assets, tars, show_progress=False)
    assert folders.read_bytes() == tars.read_bytes()


def test_corrupt_per_asset_tar_is_reported(sample_assets: Path, tmp_path: Path, cli) -> None:
    uid = uids_of(sample_assets)[0]
    to_tar_form(sample_assets, uid)
    (sample_assets / f"{uid}.tar").write_bytes(b"this is not a tar" * 10)
    out = tmp_path / "a.json.gz"
    result = cli("prepare-annotations", "--save-dir", str(sample_assets), "--output-file", str(out))
    assert result.returncode == 2
    assert f"{uid}: {sample_assets / uid}.tar" in result.stderr
    assert not out.exists()


# --------------------------------------------------------------------------- bad input


def _break_missing(root: Path, uid: str) -> None:
    (root / uid / "annotations.json.gz").unlink()


def _break_unreadable(root: Path, uid: str) -> None:
    # A directory in the file's place cannot be read, even by root (chmod 000 can).
    (root / uid / "annotations.json.gz").unlink()
    (root / uid / "annotations.json.gz").mkdir()


def _break_not_gzip(root: Path, uid: str) -> None:
    (root / uid / "annotations.json.gz").write_bytes(b'{"uid": "plain json"}')


def _break_not_json(root: Path, uid: str) -> None:
    (root / uid / "annotations.json.gz").write_bytes(gzip.compress(b"{not json"))


def _break_schema(root: Path, uid: str) -> None:
    ann = make_annotation(uid, random.Random(0))
    ann["height"] = "tall"
    write_ann(root, uid, ann)


def _break_missing_field(root: Path, uid: str) -> None:
    ann = make_annotation(uid, random.Random(0))
    del ann["category"]
    write_ann(root, uid, ann)


def _break_uid(root: Path, uid: str) -> None:
    write_ann(root, uid, make_annotation("f" * 32, random.Random(0)))


def _break_thor_metadata(root: Path, uid: str) -> None:
    (root / uid / "thor_metadata.json").write_text("{oops")


BAD_CASES = {
    "missing": (_break_missing, "annotations.json.gz: $: missing annotations.json.gz"),
    "unreadable": (_break_unreadable, "annotations.json.gz: $: cannot read"),
    "not-gzip": (_break_not_gzip, "annotations.json.gz: $: not a gzip file"),
    "not-json": (_break_not_json, "annotations.json.gz: $: not valid JSON"),
    "schema": (_break_schema, "annotations.json.gz: $.height: 'tall' does not match"),
    "missing-field": (_break_missing_field, "annotations.json.gz: $: 'category' is a required property"),
    "uid": (_break_uid, f"annotations.json.gz: $.uid: uid '{'f' * 32}' differs from its folder name"),
    "thor-metadata": (_break_thor_metadata, "thor_metadata.json: $: not valid JSON"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_is_named_and_nothing_is_written(
    case: str, sample_assets: Path, tmp_path: Path, cli
) -> None:
    breaker, expected = BAD_CASES[case]
    uid = uids_of(sample_assets)[3]
    breaker(sample_assets, uid)
    out_dir = tmp_path / "rel"
    out_dir.mkdir()
    out = out_dir / "annotations.json.gz"
    result = cli("prepare-annotations", "--save-dir", str(sample_assets), "--output-file", str(out))
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith(uid)]
    assert len(lines) >= 1 and expected in lines[0], result.stderr
    assert str(sample_assets / uid) in lines[0]
    assert "problems in 1 of 12 assets" in result.stderr
    assert "--skip-invalid" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(out_dir.iterdir()) == [], "nothing half-written"


def test_every_problem_is_listed_and_reported(sample_assets: Path, tmp_path: Path, cli) -> None:
    uids = uids_of(sample_assets)
    _break_not_gzip(sample_assets, uids[0])
    _break_schema(sample_assets, uids[1])
    _break_missing(sample_assets, uids[2])
    report = tmp_path / "report.json"
    out = tmp_path / "a.json.gz"
    result = cli("prepare-annotations", "--save-dir", str(sample_assets), "--output-file", str(out),
                 "--report", str(report))
    assert result.returncode == 2
    for uid in uids[:3]:
        assert any(ln.startswith(f"{uid}: ") for ln in result.stderr.splitlines())
    data = json.loads(report.read_text())
    assert data["assets"] == 12 and data["invalid"] == 3 and data["valid"] == 9
    assert sorted({p["uid"] for p in data["problems"]}) == sorted(uids[:3])
    assert {"uid", "file", "path", "message"} <= set(data["problems"][0])
    assert not out.exists()


def test_skip_invalid_writes_the_rest(sample_assets: Path, tmp_path: Path, cli) -> None:
    uids = uids_of(sample_assets)
    _break_uid(sample_assets, uids[0])
    _break_not_json(sample_assets, uids[5])
    out = tmp_path / "a.json.gz"
    result = cli("prepare-annotations", "--save-dir", str(sample_assets), "--output-file", str(out),
                 "--skip-invalid")
    assert result.returncode == 0, result.stderr
    assert "wrote 10 annotations" in result.stdout and "2 invalid assets left out" in result.stdout
    merged = load_annotations(out)
    assert sorted(merged) == sorted(set(uids) - {uids[0], uids[5]})


def test_junk_at_the_top_level_is_ignored(sample_assets: Path, tmp_path: Path) -> None:
    for name in (".DS_Store", "._foo", "x.lock", "notes.txt", "backup.tar"):
        (sample_assets / name).write_bytes(b"junk")
    (sample_assets / ".Spotlight-V100").mkdir()
    out = tmp_path / "a.json.gz"
    result = prepare_annotations(sample_assets, out, show_progress=False)
    assert result.written == 12 and not result.problems


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_missing_or_empty_assets_dir(kind: str, tmp_path: Path, cli) -> None:
    d = tmp_path / "assets"
    if kind == "empty":
        d.mkdir()
        (d / ".DS_Store").write_bytes(b"x")
    out = tmp_path / "a.json.gz"
    result = cli("prepare-annotations", "--save-dir", str(d), "--output-file", str(out))
    assert result.returncode == 2
    expected = {
        "missing": "assets directory not found: pass the folder of optimized assets",
        "empty": "no asset folders or <uid>.tar files found: check --save-dir",
    }[kind]
    assert result.stderr.strip() == f"objathor-release: error: {d}: {expected}"
    assert not out.exists()


def test_library_raises_input_error(
    sample_assets: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    """The library prints nothing: each problem goes to ``on_problem``, else to the module's logger."""
    uid = uids_of(sample_assets)[0]
    _break_not_gzip(sample_assets, uid)
    with caplog.at_level("WARNING", logger="objathor_release.build.annotations"), \
            pytest.raises(InputError, match="1 problems in 1 of 12 assets"):
        prepare_annotations(sample_assets, tmp_path / "a.json.gz", show_progress=False)
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 1 and logged[0].startswith(f"{uid}: ") and "not a gzip file" in logged[0]
    seen: list[str] = []
    caplog.clear()
    with pytest.raises(InputError, match="1 problems in 1 of 12 assets"):
        prepare_annotations(sample_assets, tmp_path / "a.json.gz", show_progress=False, on_problem=seen.append)
    assert seen == logged and not caplog.records
    assert capsys.readouterr() == ("", "")


# --------------------------------------------------------------------------- the fast validator


def mutations(ann: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    bad_values: list[Any] = [None, "x", "12", -1, 11, 3.5, [], {}, True, [1, "a"], {"k": "v"}, "", 7, 2.0,
                             float("nan"), {"objectMetadata": 1}, {"license": 5}, {"a": "b", "c": [1]}]
    out = []
    for key in list(ann) + ["thor_metadata"]:
        for value in rng.sample(bad_values, 6):
            m = copy.deepcopy(ann)
            m[key] = value
            out.append(m)
        m = copy.deepcopy(ann)
        m.pop(key, None)
        out.append(m)
    out.append({"thor_metadata": {"objectMetadata": {}}})
    out.append([1, 2])
    return out


def test_fast_validator_never_accepts_what_jsonschema_rejects() -> None:
    stock = jsonschema.Draft202012Validator(load_schema("annotation"))
    fast = schema_validator("annotation")
    rng = random.Random(4)

    def key(e: jsonschema.ValidationError) -> tuple[Any, ...]:
        return (e.json_path, e.message, tuple(e.schema_path), e.validator, tuple(e.path))

    checked = 0
    for _ in range(5):
        ann = make_annotation(f"{rng.getrandbits(128):032x}", rng)
        for m in mutations(ann, rng):
            expected = sorted(map(key, stock.iter_errors(m)), key=repr)
            assert sorted(map(key, fast.iter_errors(m)), key=repr) == expected
            checked += bool(expected)
    assert checked > 300  # most mutations are errors, so the comparison has teeth


def test_report_is_written_atomically_as_json(sample_assets: Path, tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    prepare_annotations(sample_assets, tmp_path / "a.json.gz", report=report, show_progress=False)
    data = json.loads(report.read_text())
    assert data == {"save_dir": str(sample_assets), "assets": 12, "valid": 12, "invalid": 0, "problems": []}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json.gz", "assets", "r.json"]


def test_gzip_reader_roundtrip_of_large_output(tmp_path: Path) -> None:
    root = tmp_path / "assets"
    make_sample_dataset(root, 40, seed=2, asset_bytes=128)
    out = tmp_path / "a.json.gz"
    prepare_annotations(root, out, show_progress=False)
    with gzip.open(out) as fh:
        text = io.TextIOWrapper(fh).read()
    assert text.startswith("{") and text.endswith("}")
    assert json.loads(text) == expected_merge(root)
