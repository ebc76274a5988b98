"""What an endpoint can and cannot do: the preflight a release sends before any build step, and a
cleanup against a server that has no ListMultipartUploads. The real moto server, behind the
rewriting proxy where an answer has to change."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from devtools.sample import make_sample_dataset
from objathor_release.cli import main
from objathor_release.errors import ReleaseError, TransferError, UsageError
from objathor_release.publish.client import make_client
from objathor_release.publish.preflight import preflight
from objathor_release.s3.target import resolve_target
from tests.conftest import REPO
from tests.support.fixtures_upload import make_release, random_bytes
from tests.support.s3proxy import Exchange, Reply, S3Proxy, xml_error

VERSION = "2024_02_01"
FAST = {"AWS_MAX_ATTEMPTS": "1", "AWS_EC2_METADATA_DISABLED": "true", "OBJATHOR_PROGRESS": "0"}


def target_for(endpoint: str, bucket: str, prefix: str | None = "2024_02_01") -> Any:
    return resolve_target(bucket=bucket, prefix=prefix, endpoint_url=endpoint, profile=None, remote=None,
                          rclone_config=None)


def run_preflight(endpoint: str, bucket: str) -> str:
    target = target_for(endpoint, bucket)
    return preflight(make_client(target), target)


# --------------------------------------------------------------------------- preflight


def test_preflight_lists_one_key_under_the_prefix(s3_env: dict[str, str], s3_server: Any, bucket: str) -> None:
    with S3Proxy(s3_server.endpoint_url) as proxy:
        line = run_preflight(proxy.url, bucket)
    assert line == (f"{proxy.url}: bucket {bucket!r} answered ListObjectsV2 (MaxKeys=1) under "
                    f"s3://{bucket}/2024_02_01")
    (ex,) = proxy.log  # one request, read-only
    assert (ex.method, ex.op, ex.query["list-type"], ex.query["max-keys"], ex.query["prefix"]) == (
        "GET", "ListObjects", "2", "1", "2024_02_01/")


def test_preflight_names_a_missing_bucket(s3_env: dict[str, str], s3_server: Any) -> None:
    with pytest.raises(UsageError) as err:
        run_preflight(s3_server.endpoint_url, "no-such-bucket-here")
    assert str(err.value) == (f"bucket 'no-such-bucket-here' does not exist at {s3_server.endpoint_url}: "
                              "create it, or check --bucket and --endpoint-url")


@pytest.mark.parametrize(("reply", "code"), [
    (xml_error("AccessDenied", "Access Denied", 403), "AccessDenied"),
    (xml_error("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist", 403),
     "InvalidAccessKeyId"),
    (xml_error("SignatureDoesNotMatch", "bad signature", 403), "SignatureDoesNotMatch"),
    (Reply(403), "403"),
])
def test_preflight_names_access_denied(reply: Reply, code: str, s3_env: dict[str, str], s3_server: Any,
                                       bucket: str) -> None:
    with S3Proxy(s3_server.endpoint_url, before=lambda ex: reply) as proxy, \
            pytest.raises(UsageError) as err:
        run_preflight(proxy.url, bucket)
    assert str(err.value) == (
        f"access denied to bucket {bucket!r} at {proxy.url} ({code}): check the credentials and their "
        f"access to s3://{bucket}/2024_02_01: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or "
        "R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY), or pass --profile or --remote")
    assert s3_env["AWS_SECRET_ACCESS_KEY"] not in str(err.value)


@pytest.mark.parametrize(("reply", "code"), [  # (a 301 PermanentRedirect botocore follows itself)
    (xml_error("AuthorizationHeaderMalformed", "the region 'us-east-1' is wrong; expecting 'eu-west-1'", 400),
     "AuthorizationHeaderMalformed"),
    (xml_error("IllegalLocationConstraintException", "wrong region", 400), "IllegalLocationConstraintException"),
])
def test_preflight_names_a_bucket_in_another_region(reply: Reply, code: str, s3_env: dict[str, str],
                                                    s3_server: Any, bucket: str) -> None:
    with S3Proxy(s3_server.endpoint_url, before=lambda ex: reply) as proxy, \
            pytest.raises(UsageError) as err:
        run_preflight(proxy.url, bucket)
    assert str(err.value) == (f"bucket {bucket!r} is not in region 'us-east-1' at {proxy.url} ({code}): set "
                              "AWS_REGION to the bucket's region, or use its regional endpoint in --endpoint-url")


def test_preflight_with_unknown_keys_against_a_checking_server(auth_s3_server: Any,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    for var, value in {**FAST, "AWS_ACCESS_KEY_ID": "AKIDUNKNOWN00001",
                       "AWS_SECRET_ACCESS_KEY": "unknown-secret-value-0001"}.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(UsageError, match=r"^access denied to bucket 'any-bucket' at .* \(InvalidAccessKeyId\)"
                       ) as err:
        run_preflight(auth_s3_server.endpoint_url, "any-bucket")
    assert "unknown-secret-value-0001" not in str(err.value) and "AKIDUNKNOWN00001" not in str(err.value)


@pytest.mark.parametrize(("endpoint", "what"), [
    ("http://127.0.0.1:1", "connection refused for 127.0.0.1"),
    ("http://no-such-host.invalid:9000", "host not found (DNS) for no-such-host.invalid"),
])
def test_preflight_says_why_it_cannot_connect(endpoint: str, what: str, s3_env: dict[str, str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(TransferError) as err:
        run_preflight(endpoint, "b1")
    assert str(err.value) == (f"cannot connect to the S3 endpoint {endpoint} ({what}): check --endpoint-url "
                              "(or AWS_ENDPOINT_URL, R2_ACCOUNT_ID) and the network")


def test_preflight_passes_other_failures_on_as_one_line(s3_env: dict[str, str], s3_server: Any,
                                                        bucket: str) -> None:
    with S3Proxy(s3_server.endpoint_url, before=lambda ex: xml_error("InternalError", "boom\nagain", 500)
                 ) as proxy, pytest.raises(ReleaseError) as err:
        run_preflight(proxy.url, bucket)
    assert "\n" not in str(err.value) and "InternalError" in str(err.value), str(err.value)


# --------------------------------------------------------------------------- cleanup


def unsupported(reply: Reply) -> Any:
    def rule(ex: Exchange) -> Reply | None:
        return reply if ex.op == "ListMultipartUploads" else None
    return rule


@pytest.mark.parametrize(("reply", "code"), [
    (xml_error("NotImplemented", "A header you provided implies functionality that is not implemented", 501),
     "NotImplemented"),
    (Reply(501), "501"),
    (xml_error("MethodNotAllowed", "The specified method is not allowed against this resource", 405),
     "MethodNotAllowed"),
])
def test_cleanup_on_an_endpoint_without_list_multipart_uploads(
        reply: Reply, code: str, s3_env: dict[str, str], s3_server: Any, bucket: str,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for var, value in FAST.items():
        monkeypatch.setenv(var, value)
    with S3Proxy(s3_server.endpoint_url, before=unsupported(reply)) as proxy:
        exit_code = main(["cleanup", "--bucket", bucket, "--endpoint-url", proxy.url, "--dry-run"])
    out, err = capsys.readouterr()
    assert exit_code == 2
    assert out == ""
    assert err == (f"objathor-release: error: cleanup is not supported by this endpoint (it has no "
                   f"ListMultipartUploads): {proxy.url} answered {code} for bucket {bucket!r}\n")
    assert "run" not in err and [ex.op for ex in proxy.log] == ["ListMultipartUploads"]


def test_cleanup_still_retries_what_is_worth_retrying(s3_env: dict[str, str], s3_server: Any, bucket: str,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A 500 is not "unsupported": it stays the transient failure it was (run the same command again)."""
    for var, value in FAST.items():
        monkeypatch.setenv(var, value)
    with S3Proxy(s3_server.endpoint_url, before=unsupported(xml_error("InternalError", "x", 500))) as proxy:
        exit_code = main(["cleanup", "--bucket", bucket, "--endpoint-url", proxy.url])
    err = capsys.readouterr().err
    assert exit_code == 1
    assert err.startswith("objathor-release: error: listing multipart uploads in bucket") and \
        err.rstrip().endswith("run the same command again"), err


# --------------------------------------------------------------------------- the release asks first


@pytest.fixture
def assets(tmp_path: Path) -> Path:
    root = tmp_path / "assets"
    make_sample_dataset(root, 3, seed=2, asset_bytes=2048)
    return root


def release_args(assets: Path, bucket: str, endpoint: str, *extra: str) -> list[str]:
    return ["release", "--version", VERSION, "--assets-dir", str(assets), "--release-dir",
            str(assets.parent / "release"), "--bucket", bucket, "--endpoint-url", endpoint, "--chunk-size", "5M",
            *extra]


def test_check_only_asks_the_bucket(s3_env: dict[str, str], s3_server: Any, bucket: str, assets: Path,
                                    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for var, value in FAST.items():
        monkeypatch.setenv(var, value)
    with S3Proxy(s3_server.endpoint_url) as proxy:
        code = main(release_args(assets, bucket, proxy.url, "--check-only"))
        out, err = capsys.readouterr()
        assert (code, err) == (0, "")
        assert out == (f"settings OK: version {VERSION}, assets {assets}, release dir {assets.parent / 'release'}, "
                       f"bucket s3://{bucket}/{VERSION} at {proxy.url} (answered ListObjectsV2 (MaxKeys=1))\n")
        assert [ex.op for ex in proxy.log] == ["ListObjects"]
        # --dry-run (make's DRY_RUN=1): the settings only, no request
        proxy.log.clear()
        assert main(release_args(assets, bucket, proxy.url, "--check-only", "--dry-run")) == 0
        assert capsys.readouterr().out.startswith("settings OK: ") and proxy.log == []
    assert not (assets.parent / "release").exists()


@pytest.mark.parametrize("args", [["--check-only"], []])
def test_a_missing_bucket_stops_the_release_before_any_build_step(
        args: list[str], s3_env: dict[str, str], s3_server: Any, assets: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    for var, value in FAST.items():
        monkeypatch.setenv(var, value)
    code = main(release_args(assets, "no-such-bucket-here", s3_server.endpoint_url, *args))
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err == (f"objathor-release: error: bucket 'no-such-bucket-here' does not exist at "
                   f"{s3_server.endpoint_url}: create it, or check --bucket and --endpoint-url\n")
    assert not (assets.parent / "release").exists()


def test_make_release_asks_the_bucket_first_and_dry_run_does_not(s3_env: dict[str, str], s3_server: Any,
                                                                 assets: Path) -> None:
    settings = [f"VERSION={VERSION}", f"ASSETS_DIR={assets}", f"RELEASE_DIR={assets.parent / 'release'}",
                "BUCKET=no-such-bucket-here", f"ENDPOINT_URL={s3_server.endpoint_url}", "CHUNK_SIZE=5M"]
    env = {**os.environ, **FAST}
    env.pop("MAKEFLAGS", None)

    def make(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), *args], capture_output=True,
                              text=True, env=env, timeout=300)

    stopped = make("release", *settings)
    assert stopped.returncode != 0
    errors = [x for x in stopped.stderr.splitlines() if x.startswith("objathor-release: error:")]
    assert errors == [f"objathor-release: error: bucket 'no-such-bucket-here' does not exist at "  # make's words
                      f"{s3_server.endpoint_url}: create it, or check BUCKET=... and ENDPOINT_URL=..."], stopped.stderr
    assert "objathor_release tar" not in stopped.stdout and not (assets.parent / "release" / "assets.tar").exists()
    # the local targets and a dry run send no request, so they do not need the bucket
    local = make("tar", *settings)
    assert local.returncode == 0, local.stderr
    assert (assets.parent / "release" / "assets.tar").exists()


def test_the_upload_says_why_it_cannot_connect(s3_env: dict[str, str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Not only the preflight: any request's connection failure names what happened."""
    for var, value in FAST.items():
        monkeypatch.setenv(var, value)
    rel = make_release(tmp_path / "rel", {"annotations.json.gz": random_bytes(1000, seed=3)})
    code = main(["upload", "--release-dir", str(rel), "--bucket", "b1", "--endpoint-url", "http://127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 1
    (line,) = [x for x in err.splitlines() if x.startswith("objathor-release: error: ")]
    assert line.startswith("objathor-release: error: cannot connect to the S3 endpoint http://127.0.0.1:1 "
                           "(connection refused) while "), line
    assert line.endswith("check --endpoint-url (or AWS_ENDPOINT_URL, R2_ACCOUNT_ID) and the network"), line


# --------------------------------------------------------------------------- hints under make


@pytest.mark.parametrize(("message", "under_make"), [
    ("bucket 'b' does not exist at http://x: create it, or check --bucket and --endpoint-url",
     "bucket 'b' does not exist at http://x: create it, or check BUCKET=... and ENDPOINT_URL=..."),
    ("s3://b/k differs: check what was published, then pass --force to overwrite it",
     "s3://b/k differs: check what was published, then pass FORCE=1 to overwrite it"),
    ("x: on the server but not in the local release: upload again (with --force for changed objects)",
     "x: on the server but not in the local release: upload again (with FORCE=1 for changed objects)"),
    ("cannot connect: check --endpoint-url (or AWS_ENDPOINT_URL, R2_ACCOUNT_ID) and the network",
     "cannot connect: check ENDPOINT_URL=... (or AWS_ENDPOINT_URL, R2_ACCOUNT_ID) and the network"),
    ("no usable S3 credentials: ..., or pass --profile or --remote",  # --remote has no Make variable
     "no usable S3 credentials: ..., or pass PROFILE=... or --remote"),
    # the subject of a message stays a flag; a message naming the Make variable already stays as it is
    ("--chunk-size 1.0 MiB is out of range", "--chunk-size 1.0 MiB is out of range"),
    ("BUCKET is not set: pass --bucket (make: BUCKET=...) or set $BUCKET",
     "BUCKET is not set: pass --bucket (make: BUCKET=...) or set $BUCKET"),
])
def test_hints_name_the_make_variables_under_make(message: str, under_make: str) -> None:
    from objathor_release.cli.common import make_hints

    assert make_hints(message) == under_make


def test_the_cli_spells_its_hints_for_make_only_under_make(s3_env: dict[str, str], s3_server: Any, assets: Path,
                                                           monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    for var, value in FAST.items():
        monkeypatch.setenv(var, value)
    argv = release_args(assets, "no-such-bucket-here", s3_server.endpoint_url, "--check-only")
    assert main(argv) == 2
    assert capsys.readouterr().err.endswith("create it, or check --bucket and --endpoint-url\n")
    monkeypatch.setenv("OBJATHOR_UNDER_MAKE", "1")
    assert main(argv) == 2
    assert capsys.readouterr().err.endswith("create it, or check BUCKET=... and ENDPOINT_URL=...\n")
