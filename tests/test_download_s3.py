"""Downloading from a private bucket over the S3 API: ``--base-url s3://BUCKET/PREFIX``.

The release sits in a bucket of the real moto server, behind the rewriting proxy, which refuses
(403) every request that is not a GET signed in its query string (``X-Amz-Signature``): a download
that gets through was signed, request by request. The same engine as over plain HTTP does the
rest (ranges, retries, verification, resume, layout), so this checks the signing and what is
shown and recorded: only ever ``s3://...``, never a signature, a key id or a query string.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.locals3 import DUMMY_CREDENTIALS
from devtools.sample import make_sample_dataset
from devtools.served_release import Release, build_release, expected_tree, tree
from objathor_release.cli import main
from objathor_release.fetch.download import download_version
from objathor_release.fetch.http import HttpConfig
from tests.support.faultproxy import PASS, FaultProxy, Request, cut
from tests.support.s3proxy import Exchange, Reply, S3Proxy, xml_error

V = "2024_02_01"
PREFIX = "staging/data"
FAST = HttpConfig(attempts=3, backoff=0.01, connections=2, part_size=1024 * 1024, read_size=256 * 1024)
SECRETS = (DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"], DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"])
LEAKS = ("X-Amz-", "Signature", "Credential=", *SECRETS)


def signed_gets_only(ex: Exchange) -> Reply | None:
    """A private bucket: an unsigned (or non-GET) request is refused as S3 refuses it."""
    if ex.method != "GET" or "X-Amz-Signature" not in ex.query:
        return xml_error("AccessDenied", "Access Denied", 403)
    return None


@pytest.fixture
def private(s3_env: dict[str, str], s3_server: Any, s3_client: Any, bucket: str, tmp_path: Path
            ) -> Iterator[tuple[S3Proxy, Release, Path]]:
    """(the signature-checking proxy, the release in the bucket under PREFIX/V, its source assets)."""
    src = tmp_path / "src" / "assets"
    make_sample_dataset(src, 8, seed=5, asset_bytes=16 * 1024, features_dir=tmp_path / "src" / "features")
    release = build_release(src, tmp_path / "served", V, features_dir=tmp_path / "src" / "features")
    for path in sorted(release.vdir.iterdir()):
        s3_client.upload_file(str(path), bucket, f"{PREFIX}/{V}/{path.name}")
    with S3Proxy(s3_server.endpoint_url, before=signed_gets_only) as proxy:
        yield proxy, release, src


def assert_nothing_leaks(text: str, root: Path) -> None:
    """No signature, key or query string in ``text`` or in any file under ``root`` (data included)."""
    for leak in LEAKS:
        assert leak not in text, leak
    assert "?" not in "".join(x for x in text.split() if "://" in x), text
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for leak in LEAKS:
                assert leak.encode() not in data, (path, leak)


def test_all_parts_download_verified_into_the_layout(private: tuple[S3Proxy, Release, Path], bucket: str,
                                                     tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    proxy, release, src = private
    dest = tmp_path / "dl"
    # plain GETs are refused: the bucket is private, and the message says what to pass
    plain = main(["download", "all", "--version", V, "--path", str(tmp_path / "plain"),
                  "--base-url", f"{proxy.url}/{bucket}/{PREFIX}"])
    err = capsys.readouterr().err
    assert plain == 2
    assert err.splitlines()[-1].startswith(
        f"objathor-release: error: access denied: the bucket is private (HTTP 403 for {proxy.url}/{bucket}/"
        f"{PREFIX}/{V}/manifest.json): download over the S3 API with credentials: pass --base-url "
        "s3://BUCKET/PREFIX and --endpoint-url URL"), err
    proxy.log.clear()
    monkeypatch.setenv("OBJATHOR_PROGRESS", "0")
    monkeypatch.setenv("OBJATHOR_BASE_URL", f"s3://{bucket}/{PREFIX}")  # the variable works as the flag
    code = main(["download", "all", "--version", V, "--path", str(dest), "--endpoint-url", proxy.url, "-v"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert tree(dest / V / "assets") == expected_tree(src)
    assert tree(dest / V / "features") == tree(release.vdir.parent.parent / "src" / "features")
    assert (dest / V / "annotations.json.gz").read_bytes() == (release.vdir / "annotations.json.gz").read_bytes()
    assert f"annotations: downloaded at {dest / V / 'annotations.json.gz'} (verified" in out
    assert "assets: downloaded at" in out and "features: downloaded at" in out
    assert proxy.log and all(ex.status in (200, 206, 404) for ex in proxy.log), [
        (ex.op, ex.status) for ex in proxy.log]
    assert {ex.method for ex in proxy.log} == {"GET"}
    assert_nothing_leaks(out + err, dest)
    # a second run finds every part done, from the markers (which name s3:// URLs only)
    again = main(["download", "all", "--version", V, "--path", str(dest), "--endpoint-url", proxy.url])
    out, err = capsys.readouterr()
    assert again == 0 and out.count("already there") == 3, out + err
    assert_nothing_leaks(out + err, dest)


def test_a_cut_stream_resumes_signed_again(private: tuple[S3Proxy, Release, Path], bucket: str,
                                           tmp_path: Path) -> None:
    proxy, release, src = private
    size = release.artifact("assets.tar")["size"]

    def rule(req: Request) -> Any:
        gets = [r for r in fault.log if "/assets.tar" in r.path]
        return cut(size // 2) if "/assets.tar" in req.path and len(gets) == 1 else PASS

    with FaultProxy(proxy.url, rule) as fault:
        result = download_version("assets", V, path=tmp_path / "dl", base_url=f"s3://{bucket}/{PREFIX}",
                                  endpoint_url=fault.url, show_progress=False, http_config=FAST)
    assert result.verified
    assert tree(tmp_path / "dl" / V / "assets") == expected_tree(src)
    gets = [r for r in fault.log if "/assets.tar" in r.path]
    assert len(gets) == 2
    assert "Range" not in gets[0].headers
    assert gets[1].headers["Range"] == f"bytes={size // 2}-" and gets[1].headers["If-Range"]
    assert all("X-Amz-Signature=" in r.path for r in gets)  # each request signed, the resumed one too
    summary = result.summary()
    assert_nothing_leaks(summary, tmp_path / "dl")


def test_wrong_credentials_are_access_denied_and_stay_hidden(
        s3_env: dict[str, str], s3_server: Any, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OBJATHOR_PROGRESS", "0")
    with S3Proxy(s3_server.endpoint_url, before=lambda ex: xml_error("InvalidAccessKeyId", "no", 403)) as proxy:
        code = main(["download", "assets", "--version", V, "--path", str(tmp_path / "dl"),
                     "--base-url", f"s3://{bucket}/{PREFIX}", "--endpoint-url", proxy.url])
    err = capsys.readouterr().err
    assert code == 2, err
    assert [x for x in err.splitlines() if "error:" in x] == [(
        f"objathor-release: error: access denied (HTTP 403) for s3://{bucket}/{PREFIX}/{V}/manifest.json: the "
        "credentials may not read it; check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or R2_ACCESS_KEY_ID "
        "and R2_SECRET_ACCESS_KEY, or --profile), their access to the bucket, and --endpoint-url")], err
    assert_nothing_leaks(err, tmp_path)


@pytest.mark.parametrize(("argv", "env", "message"), [
    (["--base-url", "s3://b1/x"], {"AWS_ACCESS_KEY_ID": "AKIDHALF1234", "AWS_SECRET_ACCESS_KEY": ""},
     "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not: set AWS_SECRET_ACCESS_KEY too (or unset "
     "AWS_ACCESS_KEY_ID to take the credentials from elsewhere)"),
    (["--base-url", "s3://b1/x"], {"AWS_ENDPOINT_URL": ""},
     "no S3 endpoint: pass --endpoint-url, or set AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL or R2_ACCOUNT_ID"),
    (["--base-url", "http://127.0.0.1:1/x", "--endpoint-url", "http://127.0.0.1:1"], {},
     "--endpoint-url and --profile are for downloading over the S3 API: pass --base-url s3://BUCKET/PREFIX "
     "too"),
    (["--base-url", "s3:///no-bucket"], {},
     "--base-url 's3:///no-bucket' is not of the form s3://BUCKET/PREFIX"),
])
def test_s3_settings_are_one_line_before_any_request(argv: list[str], env: dict[str, str], message: str,
                                                     s3_env: dict[str, str], tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    code = main(["download", "assets", "--version", V, "--path", str(tmp_path / "dl"), *argv])
    err = capsys.readouterr().err
    assert (code, err) == (2, f"objathor-release: error: {message}\n")
    assert not (tmp_path / "dl").exists()


# ---------------------------------------------------------------------- a hostile endpoint


def _echoing_redirect(location: str) -> Any:
    """The endpoint answers a signed GET of manifest.json with a redirect whose Location carries the
    request's own signed query string (as S3's 307 to a regional endpoint does) under ``location``."""
    def before(ex: Exchange) -> Reply | None:
        if ex.method == "GET" and ex.key.endswith("manifest.json") and "X-Amz-Signature" in ex.query:
            query = urllib.parse.urlsplit(ex.path).query
            return Reply(307, {"Location": f"{location}{urllib.parse.urlsplit(ex.path).path}?{query}"})
        return signed_gets_only(ex)
    return before


@pytest.mark.parametrize("location", ["ftp://elsewhere.invalid", "http://elsewhere.invalid:99999999"])
def test_a_refused_redirect_of_a_signed_request_shows_no_signature(
        location: str, s3_env: dict[str, str], s3_server: Any, bucket: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OBJATHOR_PROGRESS", "0")
    with S3Proxy(s3_server.endpoint_url, before=_echoing_redirect(location)) as proxy:
        code = main(["download", "assets", "--version", V, "--path", str(tmp_path / "dl"),
                     "--base-url", f"s3://{bucket}/{PREFIX}", "--endpoint-url", proxy.url])
    err = capsys.readouterr().err
    assert code == 2, err
    assert_nothing_leaks(err, tmp_path)


def test_a_profile_and_the_endpoint_variable_work_as_the_upload_reads_them(
        private: tuple[S3Proxy, Release, Path], bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    proxy, _, src = private
    creds = tmp_path / "credentials"
    creds.write_text(f"[staging]\naws_access_key_id = {SECRETS[0]}\naws_secret_access_key = {SECRETS[1]}\n")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
    monkeypatch.setenv("OBJATHOR_PROGRESS", "0")
    code = main(["download", "assets", "--version", V, "--path", str(tmp_path / "dl"),
                 "--base-url", f"s3://{bucket}/{PREFIX}", "--profile", "staging"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert tree(tmp_path / "dl" / V / "assets") == expected_tree(src)
    assert any("X-Amz-Signature" in ex.query for ex in proxy.log)
    assert_nothing_leaks(out + err, tmp_path / "dl")
    # an unknown profile is one line, before any request
    proxy.log.clear()
    code = main(["download", "assets", "--version", V, "--path", str(tmp_path / "dl2"),
                 "--base-url", f"s3://{bucket}/{PREFIX}", "--profile", "nope"])
    assert (code, capsys.readouterr().err) == (
        2, "objathor-release: error: credentials profile 'nope' not found: check --profile or AWS_PROFILE\n")
    assert proxy.log == []


def test_bucket_and_prefix_are_the_s3_base_url(private: tuple[S3Proxy, Release, Path], bucket: str,
                                               tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    proxy, release, _ = private
    monkeypatch.setenv("OBJATHOR_PROGRESS", "0")
    dest = tmp_path / "dl"
    code = main(["download", "annotations", "--version", V, "--path", str(dest), "--bucket", bucket,
                 "--prefix", f"/{PREFIX}/", "--endpoint-url", proxy.url])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert (dest / V / "annotations.json.gz").read_bytes() == (release.vdir / "annotations.json.gz").read_bytes()
    assert_nothing_leaks(out + err, dest)
    for argv, message in [
        (["--bucket", bucket, "--base-url", f"s3://{bucket}"],
         "--bucket and --base-url both say where the version is: pass one of them"),
        (["--bucket", f"{bucket}/{PREFIX}"],
         f"--bucket '{bucket}/{PREFIX}' is not a bucket name: put the key prefix in --prefix"),
        (["--prefix", PREFIX], "--prefix goes with --bucket (or put it in --base-url s3://BUCKET/PREFIX)"),
    ]:
        code = main(["download", "annotations", "--version", V, "--path", str(tmp_path / "x"), *argv])
        assert (code, capsys.readouterr().err) == (2, f"objathor-release: error: {message}\n")
