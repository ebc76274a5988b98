"""The package's shell: CLI help, config validation, atomic writes, the local S3 fixture, what the CLI
shows (log lines, progress) and the source checkout's ``python -m devtools``."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.sample import make_sample_dataset
from objathor_release.errors import UsageError
from objathor_release.fsutil import atomic_write
from objathor_release.settings import UploadConfig, adjust_part_size, parse_size, validate_version
from tests.conftest import REPO, run_cli
from tests.support.faultproxy import PASS, FaultProxy, status

MiB = 1024 * 1024


def test_help_lists_every_subcommand() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for name in ("prepare-annotations", "tar", "manifest", "verify", "upload", "cleanup",
                 "download", "release", "sample-dataset", "demo"):
        assert name in result.stdout
        sub = run_cli(name, "--help")
        assert sub.returncode == 0, sub.stderr
        assert f"usage: objathor-release {name}" in sub.stdout


def test_console_script_and_version() -> None:
    import shutil
    import subprocess
    import sys

    exe = Path(sys.executable).parent / "objathor-release"
    assert exe.exists() or shutil.which("objathor-release")
    out = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    assert out.returncode == 0
    assert out.stdout.startswith("objathor-release 0.")


@pytest.mark.parametrize("text", ["2024_02_30", "2024-02-01", "24_02_01", "", "2024_13_01"])
def test_bad_versions_are_refused(text: str) -> None:
    with pytest.raises(UsageError, match="version|VERSION"):
        validate_version(text)


def test_good_version() -> None:
    assert validate_version("2023_09_23") == "2023_09_23"


@pytest.mark.parametrize(("text", "value"), [("64M", 64 * MiB), ("5MiB", 5 * MiB), ("1G", 1024 * MiB),
                                              ("1.5K", 1536), ("4096", 4096)])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


def test_parse_size_rejects_garbage() -> None:
    with pytest.raises(UsageError, match="not understood"):
        parse_size("lots")


def test_part_size_adjuster_keeps_s3_limits() -> None:
    assert adjust_part_size(100 * MiB, 1 * MiB) == 5 * MiB
    big = 1024 * 1024 * MiB  # 1 TiB at 64 MiB would need 16384 parts
    size = adjust_part_size(big, 64 * MiB)
    assert size % MiB == 0 and -(-big // size) <= 10_000
    with pytest.raises(UsageError, match="5 MiB to 5 GiB"):
        UploadConfig(chunk_size=4 * MiB)
    with pytest.raises(UsageError, match="--transfers"):
        UploadConfig(transfers=0)


def test_atomic_write_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_write(target) as fh:
        fh.write(b"half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_write(target) as fh:
        fh.write(b"whole")
    assert target.read_bytes() == b"whole"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_sample_dataset_is_deterministic(tmp_path: Path) -> None:
    a = make_sample_dataset(tmp_path / "a", 5, seed=3)
    b = make_sample_dataset(tmp_path / "b", 5, seed=3)
    assert a == b
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*"))
    assert files_a == files_b
    for rel in files_a:
        if (tmp_path / "a" / rel).is_file():
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    ann = json.loads(gzip.decompress((tmp_path / "a" / a[0] / "annotations.json.gz").read_bytes()))
    assert ann["uid"] == a[0]


def test_moto_server_fixture_and_proxy(s3_client, bucket, s3_server) -> None:  # type: ignore[no-untyped-def]
    import boto3
    from botocore.config import Config

    s3_client.put_object(Bucket=bucket, Key="k", Body=b"hello")
    assert s3_client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"hello"
    # One injected 503 is retried by botocore; the proxy saw it.
    with FaultProxy(s3_server.endpoint_url, lambda r: status(503) if r.index == 0 else PASS) as proxy:
        client = boto3.client("s3", endpoint_url=proxy.url, region_name="us-east-1",
                              config=Config(retries={"mode": "standard", "max_attempts": 3}))
        assert client.get_object(Bucket=bucket, Key="k")["Body"].read() == b"hello"
        assert len(proxy.log) == 2


def test_public_names_are_exported_from_the_package() -> None:
    import objathor_release

    for name in objathor_release.__all__:
        assert getattr(objathor_release, name) is not None, name
    from objathor_release.build.annotations import prepare_annotations
    from objathor_release.publish.remote import verify_remote

    assert objathor_release.prepare_annotations is prepare_annotations
    assert objathor_release.verify_remote is verify_remote
    assert "build_tar" in dir(objathor_release)
    with pytest.raises(AttributeError):
        _ = objathor_release.no_such_name  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- output: logging and progress


def test_the_library_is_silent_unless_the_caller_sets_up_output(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    import logging

    from objathor_release.build.tarball import build_tar
    from objathor_release.progress import SilentProgress, progress

    make_sample_dataset(tmp_path / "assets", 3, seed=2, asset_bytes=4 * 1024)
    build_tar(tmp_path / "assets", tmp_path / "assets.tar", show_progress=True)
    logging.getLogger("objathor_release.fetch.job").warning("a note nobody asked to see")
    assert isinstance(progress(10, "work"), SilentProgress)
    assert capfd.readouterr() == ("", "")


def test_the_cli_shows_log_lines_and_progress_then_puts_everything_back(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from objathor_release.cli import main
    from objathor_release.progress import set_renderer

    monkeypatch.setenv("OBJATHOR_PROGRESS_INTERVAL", "0")
    monkeypatch.delenv("OBJATHOR_PROGRESS", raising=False)
    make_sample_dataset(tmp_path / "assets", 3, seed=2, asset_bytes=4 * 1024)
    package = logging.getLogger("objathor_release")
    handlers, level = list(package.handlers), package.level
    for _ in (1, 2):  # a second run in the same process shows each line once
        assert main(["tar", "--assets-dir", str(tmp_path / "assets"), "--output", str(tmp_path / "a.tar")]) == 0
        out, err = capsys.readouterr()
        assert out.startswith("wrote ") and "a.tar" in out
        done = [ln for ln in err.splitlines() if ln.startswith("tar a.tar: ") and ln.endswith(" done")]
        assert len(done) == 1, err  # plain lines (not a terminal), no prefix, one final line
    assert package.handlers == handlers and package.level == level
    assert set_renderer(None) is None  # nothing left installed for later library calls
    # -q: no progress at all
    assert main(["tar", "-q", "--assets-dir", str(tmp_path / "assets"), "--output", str(tmp_path / "b.tar")]) == 0
    assert "tar b.tar" not in capsys.readouterr().err


def test_a_log_record_becomes_one_prefixed_stderr_line(capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from objathor_release.cli.output import cli_output

    log = logging.getLogger("objathor_release.fetch.job")
    with cli_output():
        log.warning("note: version 2024_02_01 has no manifest.json")
        log.info("assets.tar: up to date")
        log.debug("not shown without -v")
    with cli_output(verbose=True):
        log.debug("shown with -v")
    log.warning("after the command: silent again")
    assert capsys.readouterr().err.splitlines() == [
        "objathor-release: note: version 2024_02_01 has no manifest.json",
        "objathor-release: assets.tar: up to date",
        "objathor-release: shown with -v",
    ]


def test_a_bad_progress_interval_is_one_line(tmp_path: Path) -> None:
    make_sample_dataset(tmp_path / "assets", 2, seed=2, asset_bytes=4 * 1024)
    result = run_cli("tar", "--assets-dir", str(tmp_path / "assets"), "--output", str(tmp_path / "a.tar"),
                     env={"OBJATHOR_PROGRESS_INTERVAL": "soon"})
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == ("objathor-release: error: OBJATHOR_PROGRESS_INTERVAL='soon' is not a "
                                     "number of seconds: set it to e.g. 10, or unset it")
    assert not (tmp_path / "a.tar").exists()


# --------------------------------------------------------------------------- devtools: python -m devtools


def run_devtools(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "devtools", *args], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, **(env or {})}, timeout=300)


@pytest.mark.parametrize(("argv", "line"), [
    (["demo"], "demo needs a source checkout: run 'make demo' (or 'python -m devtools demo') there"),
    (["demo", "--workdir", "x", "--assets", "3"],
     "demo needs a source checkout: run 'make demo' (or 'python -m devtools demo') there"),
    (["sample-dataset", "x", "--assets", "3"],
     "sample-dataset needs a source checkout: run 'python -m devtools sample-dataset DIR' there"),
])
def test_the_installed_cli_sends_demo_and_sample_dataset_to_the_checkout(
        argv: list[str], line: str, tmp_path: Path) -> None:
    result = run_cli(*argv, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"objathor-release: error: {line}\n"
    assert list(tmp_path.iterdir()) == []


def test_devtools_sample_dataset_writes_the_generators_tree(tmp_path: Path) -> None:
    result = run_devtools("sample-dataset", str(tmp_path / "cli"), "--assets", "4", "--seed", "9",
                          "--asset-size", "8K", "--no-junk")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote 4 sample assets to {tmp_path / 'cli'}\n"
    uids = make_sample_dataset(tmp_path / "lib", 4, seed=9, asset_bytes=8 * 1024, junk=False)
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == uids
    for path in (tmp_path / "lib").rglob("*"):
        twin = tmp_path / "cli" / path.relative_to(tmp_path / "lib")
        assert twin.is_file() == path.is_file() and (not path.is_file() or twin.read_bytes() == path.read_bytes())
    bad = run_devtools("sample-dataset", str(tmp_path / "x"), "--asset-size", "lots")
    assert bad.returncode == 2 and bad.stderr.startswith("devtools: error: ") and "Traceback" not in bad.stderr


def test_devtools_open_bucket_makes_a_publicly_readable_bucket(s3_server, s3_client) -> None:  # type: ignore[no-untyped-def]
    import urllib.request
    import uuid

    name = f"trial-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    first = subprocess.run([sys.executable, "-m", "devtools", "open-bucket", name, "--endpoint-url",
                            s3_server.endpoint_url], capture_output=True, text=True, cwd=REPO, env=env,
                           timeout=120)  # no credentials in the environment: test/test on 127.0.0.1
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"bucket {name} created at {s3_server.endpoint_url}, readable by anyone\n"
    s3_client.put_object(Bucket=name, Key="2024_02_01/hello.txt", Body=b"hello")
    with urllib.request.urlopen(f"{s3_server.endpoint_url}/{name}/2024_02_01/hello.txt", timeout=30) as resp:
        assert resp.read() == b"hello"  # an anonymous GET, as the download makes
    again = run_devtools("open-bucket", name, env={"AWS_ENDPOINT_URL": s3_server.endpoint_url})
    assert again.returncode == 0, again.stderr
    assert f"bucket {name} " in again.stdout and "readable by anyone" in again.stdout
    nowhere = run_devtools("open-bucket", name, env={"AWS_ENDPOINT_URL": "", "AWS_ENDPOINT_URL_S3": ""})
    assert nowhere.returncode == 2
    assert nowhere.stderr.startswith("devtools: error: open-bucket needs the local S3 endpoint: pass "
                                     "--endpoint-url URL")


def test_remove_path_takes_trees_deeper_than_the_recursion_limit_and_never_follows_links(tmp_path: Path) -> None:
    import sys

    from objathor_release.fsutil import remove_path

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not ours to delete")
    root = tmp_path / "deep"
    depth = sys.getrecursionlimit() + 200
    path = str(root)
    os.mkdir(path)
    for _ in range(depth):  # os.makedirs recurses too
        path = os.path.join(path, "d")
        os.mkdir(path)
    leaf = Path(path)
    (leaf / "file.bin").write_bytes(b"x")
    (leaf / "link-to-outside").symlink_to(outside)
    (root / "d" / "file-link").symlink_to(outside / "keep.txt")
    remove_path(root)
    assert not root.exists()
    assert (outside / "keep.txt").read_text() == "not ours to delete"
    remove_path(root)  # nothing there is fine
    link = tmp_path / "dir-link"
    link.symlink_to(outside)
    remove_path(link)
    assert not link.exists() and (outside / "keep.txt").exists()
