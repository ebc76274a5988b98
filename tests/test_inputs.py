"""A release's inputs (objathor_release.build.inputs) and the Make dependency file `deps` writes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from devtools.sample import make_sample_dataset
from objathor_release.build.inputs import (
    ALWAYS,
    is_annotation_input,
    make_name,
    release_inputs,
    walk,
    write_make_deps,
)
from objathor_release.build.tarball import build_tar
from objathor_release.errors import InputError
from tests.conftest import run_cli

UID = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def assets(tmp_path: Path) -> Path:
    root = tmp_path / "assets"
    make_sample_dataset(root, 4, seed=3, asset_bytes=1024)
    return root


def test_the_tar_inputs_are_exactly_the_files_the_tar_archives(assets: Path, tmp_path: Path) -> None:
    uid = sorted(p.name for p in assets.iterdir() if p.is_dir())[0]
    (assets / uid / ".Trashes").mkdir()
    (assets / uid / ".Trashes" / "kept-out").write_bytes(b"x")  # inside an excluded folder
    (assets / uid / "notes.tmp").write_bytes(b"x")  # excluded by the extra pattern below
    (assets / uid / "with space.bin").write_bytes(b"x")
    result = build_tar(assets, tmp_path / "assets.tar", extra_excludes=["*.tmp"], show_progress=False)
    inputs = release_inputs(assets, excludes=["*.tmp"])
    archived = sorted(m["path"].split("/", 1)[1] for m in result.members)
    assert sorted(i.rel for i in inputs.artifacts["assets.tar"]) == archived
    assert all(i.path == assets / i.rel for i in inputs.artifacts["assets.tar"])
    assert assets / uid / ".Trashes" not in inputs.folders and assets / uid in inputs.folders


def test_the_holodeck_inputs_are_every_file_its_tar_archives(assets: Path, tmp_path: Path) -> None:
    base = tmp_path / "2023_09_23"
    for rel in ("thor_object_data/annotations.json.gz", "thor_object_data/thor_metadata.json",
                ".DS_Store", "objaverse_holodeck/x.lock", "objaverse_holodeck/notes.tmp"):
        (base / rel).parent.mkdir(parents=True, exist_ok=True)
        (base / rel).write_bytes(b"x")
    result = build_tar(base, tmp_path / "holodeck.tar", extra_excludes=["*.tmp"], default_excludes=False,
                       show_progress=False)
    inputs = release_inputs(assets, excludes=["*.tmp"], holodeck_dir=base)
    got = [i.rel for i in inputs.artifacts["holodeck.tar"]]
    assert sorted(got) == sorted(m["path"].split("/", 1)[1] for m in result.members) == [
        ".DS_Store", "objaverse_holodeck/x.lock", "thor_object_data/annotations.json.gz",
        "thor_object_data/thor_metadata.json"]
    assert base / "thor_object_data" in inputs.folders
    assert "holodeck.tar" not in release_inputs(assets).artifacts


def test_the_annotation_inputs_are_what_prepare_annotations_reads(assets: Path) -> None:
    (assets / f"{UID}.tar").write_bytes(b"")
    (assets / "._junk").mkdir()
    (assets / "._junk" / "annotations.json.gz").write_bytes(b"")
    folders = sorted(p.name for p in assets.iterdir() if p.is_dir() and not p.name.startswith("."))
    (assets / folders[0] / "deeper").mkdir()
    (assets / folders[0] / "deeper" / "annotations.json.gz").write_bytes(b"")
    # a folder the tar leaves out is still an asset for prepare-annotations
    inputs = release_inputs(assets, excludes=[folders[1]])
    got = sorted(i.rel for i in inputs.artifacts["annotations.json.gz"])
    expected = sorted([f"{UID}.tar"] + [f"{f}/{n}" for f in folders for n in ("annotations.json.gz",
                                                                             "thor_metadata.json")
                                        if (assets / f / n).exists()])
    assert got == expected
    assert not any(i.rel.startswith(folders[1]) for i in inputs.artifacts["assets.tar"])
    assert is_annotation_input(f"{UID}.tar") and not is_annotation_input("x.tar")
    assert not is_annotation_input("a.lock/annotations.json.gz")


def test_walk_names_a_folder_that_is_gone(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"gone: vanished while it was being read: fix its permissions"):
        list(walk(tmp_path / "gone"))
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(InputError, match="file: was replaced by a file while it was being read"):
        list(walk(tmp_path / "file"))


@pytest.mark.parametrize(("path", "spelled"), [
    ("a b", r"a\ b"), ("c$d", "c$$d"), ("e#f", r"e\#f"), ("g:h", r"g\:h"), ("k*l?[m]", r"k\*l\?\[m\]"),
    (r"back\ slash", r"back\\\ slash"), (r"q\r", r"q\r"),
    ("s;t", None), ("u=v", None), ("i%j", None), ("w|x", None), ("a(b)", None), ("tab\tx", None),
    ("new\nline", None), ("trailing\\", None),
])
def test_make_name_escapes_what_make_reads_specially(path: str, spelled: str | None) -> None:
    assert make_name(path) == spelled


def test_the_dependency_file_works_with_make(tmp_path: Path) -> None:
    """Build a toy 'artifact' with make from the rules: up to date, then each kind of change."""
    root = tmp_path / "in"
    (root / "a dir").mkdir(parents=True)
    (root / "a dir" / "odd $#: name").write_bytes(b"1")
    release = tmp_path / "out"
    deps = release / ".inputs.mk"
    makefile = tmp_path / "Makefile"
    makefile.write_text(
        f"-include {deps}\n"
        f"{release}/assets.tar:\n\ttouch '$@'\n"
        f"{deps}:\n\ttrue\n"
    )

    def regenerate() -> None:
        write_make_deps(release_inputs(root), str(release), deps)

    def make_q() -> int:
        return subprocess.run(["make", "-s", "-q", "-f", str(makefile), f"{release}/assets.tar"],
                              capture_output=True, cwd=tmp_path).returncode

    def make() -> None:
        done = subprocess.run(["make", "-s", "-f", str(makefile), f"{release}/assets.tar"],
                              capture_output=True, text=True, cwd=tmp_path)
        assert done.returncode == 0, done.stderr

    regenerate()
    make()
    assert make_q() == 0
    later = (release / "assets.tar").stat().st_mtime + 10
    os.utime(root / "a dir" / "odd $#: name", (later, later))
    assert make_q() == 1
    make()
    (root / "a dir" / "odd $#: name").unlink()  # a deleted input: the list changes
    regenerate()
    assert make_q() == 1
    make()
    assert make_q() == 0
    (root / "a dir" / ".DS_Store").write_bytes(b"")  # excluded: the list stays, nothing to do
    regenerate()
    assert make_q() == 0


def test_an_input_make_cannot_name_rebuilds_always(tmp_path: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    (root / "semi;colon").write_bytes(b"")
    result = write_make_deps(release_inputs(root), str(tmp_path / "out"), tmp_path / "out" / ".inputs.mk")
    assert result.unnameable == [str(root / "semi;colon")]
    text = (tmp_path / "out" / ".inputs.mk").read_text()
    assert f"  {ALWAYS}\n" in text and f".PHONY: {ALWAYS}" in text and "semi;colon" not in text


def test_deps_command_errors_are_one_line(tmp_path: Path) -> None:
    result = run_cli("deps", "--assets-dir", str(tmp_path / "missing"), "--release-dir", str(tmp_path),
                     "--output", str(tmp_path / "d.mk"))
    assert result.returncode == 2
    assert result.stderr == f"objathor-release: error: {tmp_path / 'missing'}: assets directory not found: " \
                            "check ASSETS_DIR / --assets-dir\n"
    (tmp_path / "a").mkdir()
    result = run_cli("deps", "--assets-dir", str(tmp_path / "a"), "--release-dir", str(tmp_path / "r;x"),
                     "--output", str(tmp_path / "d.mk"))
    assert result.returncode == 2 and "make cannot name this path" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_fingerprints_are_those_the_release_state_already_holds(tmp_path: Path) -> None:
    """On a tree without files inside excluded folders, hashing the inputs gives the fingerprints a
    release dir's state recorded before (paths filtered one by one), so nothing rebuilds for it."""
    from objathor_release.build.excludes import DEFAULT_EXCLUDES, compile_excludes
    from objathor_release.build.inputs import ANNOTATION_FILES, fingerprints

    root, features = tmp_path / "assets", tmp_path / "features"
    make_sample_dataset(root, 12, seed=5, asset_bytes=1024, features_dir=features)
    excludes = [*DEFAULT_EXCLUDES, "*.jpg"]
    excluded = compile_excludes(excludes)
    before = fingerprints(
        root, (lambda rel: rel.rsplit("/", 1)[-1] in ANNOTATION_FILES or rel.endswith(".tar"), ()),
        (lambda rel: not excluded(f"assets/{rel}"), (0, excludes)))
    inputs = release_inputs(root, features, ["*.jpg"])
    assert before == [inputs.fingerprint("annotations.json.gz"), inputs.fingerprint("assets.tar", 0, excludes)]
    inputs_without_jpg_rule = release_inputs(root, features)
    assert inputs_without_jpg_rule.fingerprint("assets.tar", 0, excludes) != before[1]
