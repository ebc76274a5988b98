"""Credentials set by half, and where they come from: every S3 command stops with one line naming the
variable that is missing, exit 2, before any request (the endpoint here is a closed port)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devtools.sample import make_sample_dataset
from objathor_release.cli import main
from tests.support.fixtures_upload import VERSION, make_release, random_bytes

DEAD = "http://127.0.0.1:1"
CREDENTIAL_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "R2_ACCESS_KEY_ID",
                   "R2_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                   "R2_ACCOUNT_ID", "BUCKET", "VERSION", "ASSETS_DIR", "RELEASE_DIR")

# (what is set, the line the commands must stop with)
PARTIAL = [
    ({"AWS_ACCESS_KEY_ID": "AKIDHALF1234"},
     "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not: set AWS_SECRET_ACCESS_KEY too "
     "(or unset AWS_ACCESS_KEY_ID to take the credentials from elsewhere)"),
    ({"AWS_SECRET_ACCESS_KEY": "half-secret-1234"},
     "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not: set AWS_ACCESS_KEY_ID too "
     "(or unset AWS_SECRET_ACCESS_KEY to take the credentials from elsewhere)"),
    ({"R2_ACCESS_KEY_ID": "r2half1234"},
     "R2_ACCESS_KEY_ID is set but R2_SECRET_ACCESS_KEY is not: set R2_SECRET_ACCESS_KEY too "
     "(or unset R2_ACCESS_KEY_ID to take the credentials from elsewhere)"),
    ({"R2_SECRET_ACCESS_KEY": "r2-half-secret-1234"},
     "R2_SECRET_ACCESS_KEY is set but R2_ACCESS_KEY_ID is not: set R2_ACCESS_KEY_ID too "
     "(or unset R2_SECRET_ACCESS_KEY to take the credentials from elsewhere)"),
    # one half of each pair is still a missing AWS secret: the AWS pair is looked at first
    ({"AWS_ACCESS_KEY_ID": "AKIDHALF1234", "R2_SECRET_ACCESS_KEY": "r2-half-secret-1234"},
     "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not: set AWS_SECRET_ACCESS_KEY too "
     "(or unset AWS_ACCESS_KEY_ID to take the credentials from elsewhere)"),
    ({"AWS_SESSION_TOKEN": "token-1234"},
     "AWS_SESSION_TOKEN is set but AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not: set them too "
     "(or unset AWS_SESSION_TOKEN)"),
]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for var in CREDENTIAL_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("OBJATHOR_PROGRESS", "0")
    return make_release(tmp_path / "release", {"annotations.json.gz": random_bytes(1000, seed=3)})


def commands(release: Path) -> dict[str, list[str]]:
    s3 = ["--bucket", "b1", "--endpoint-url", DEAD]
    assets = release.parent / "assets"
    if not assets.exists():
        make_sample_dataset(assets, 2, seed=1, asset_bytes=1024)
    build = ["--version", VERSION, "--assets-dir", str(assets), "--release-dir", str(release.parent / "built"),
             "--chunk-size", "5M",
             *s3]
    return {
        "release": ["release", *build],
        "release --check-only": ["release", "--check-only", *build],
        "release --dry-run": ["release", "--dry-run", *build],
        "upload": ["upload", "--release-dir", str(release), *s3],
        "upload --dry-run": ["upload", "--release-dir", str(release), *s3, "--dry-run"],
        "publish": ["publish", "--version", VERSION, "--release-dir", str(release), *s3, "--chunk-size", "5M"],
        "publish --dry-run": ["publish", "--version", VERSION, "--release-dir", str(release), *s3, "--dry-run",
                              "--chunk-size", "5M"],
        "cleanup": ["cleanup", *s3],
    }


def error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    """Run the CLI in-process; its exit code and its one error line (stderr's last line, the only error)."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = err.splitlines()
    assert lines and lines[-1].startswith("objathor-release: error: "), err
    assert [x for x in lines if "error" in x.lower()] == lines[-1:], err
    return code, lines[-1].removeprefix("objathor-release: error: ")


@pytest.mark.parametrize("partial,message", PARTIAL, ids=lambda v: "+".join(v) if isinstance(v, dict) else "")
def test_partial_credentials_are_one_line_naming_the_missing_variable(
        partial: dict[str, str], message: str, clean_env: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    for var, value in partial.items():
        monkeypatch.setenv(var, value)
    for name, argv in commands(clean_env).items():
        code, line = error_line(capsys, argv)
        assert (code, line) == (2, message), name
        for value in partial.values():  # a half-set key is still a secret
            assert value not in line
    assert not (clean_env.parent / "built").exists()  # the release stopped before any build step


def test_a_complete_pair_wins_over_a_half_pair(clean_env: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A full R2 pair is used as before; the half AWS pair beside it is a warning, not an error."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDHALF1234")
    monkeypatch.setenv("R2_ACCESS_KEY_ID", "r2id1234")
    monkeypatch.setenv("R2_SECRET_ACCESS_KEY", "r2-secret-1234")
    code = main(commands(clean_env)["upload --dry-run"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err.splitlines() == ["objathor-release: AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not; "
                                "using R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY"]
    assert "r2-secret-1234" not in out + err and "AKIDHALF1234" not in out + err


def test_an_explicit_profile_is_not_disturbed_by_a_half_pair(clean_env: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """--profile reads the shared files only (botocore skips the environment then), so it still works."""
    creds = tmp_path / "credentials"
    creds.write_text("[full]\naws_access_key_id = AKIDFULL1234\naws_secret_access_key = full-secret-1234\n"
                     "[half]\naws_access_key_id = AKIDHALF5678\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDENV1234")
    argv = commands(clean_env)["upload --dry-run"]
    assert main([*argv, "--profile", "full"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    # a profile with half its keys: botocore's PartialCredentialsError becomes one line
    code, line = error_line(capsys, [*argv, "--profile", "half"])
    assert code == 2
    assert line == ("profile 'half' has partial credentials in shared-credentials-file (missing "
                    "aws_secret_access_key): add it, or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                    "(or R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY), or pass --profile or --remote")
    # the same profile chosen by AWS_PROFILE, through botocore's whole chain
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.setenv("AWS_PROFILE", "half")
    code, line = error_line(capsys, commands(clean_env)["cleanup"])
    assert code == 2
    assert line.startswith("the AWS credential chain has partial credentials in shared-credentials-file "
                           "(missing aws_secret_access_key): add it, or set AWS_ACCESS_KEY_ID"), line
