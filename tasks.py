"""invoke tasks: the same steps as the Makefile, wired to the package. `invoke --list` shows them.

Every task runs ``python -m objathor_release`` with the interpreter invoke runs
under, so the tasks and the Make targets call the same package code.
"""

from __future__ import annotations

import shlex
import sys

from invoke import Context, task

CLI = f"{shlex.quote(sys.executable)} -m objathor_release"


def _run(c: Context, *words: object) -> None:
    """Run the CLI with the given words; empty and None words are dropped."""
    argv = [str(w) for w in words if w not in (None, "", False)]
    c.run(f"{CLI} {shlex.join(argv)}", pty=sys.stdout.isatty())


@task(help={
    "save_dir": "directory of optimized assets, one folder (or .tar) per uid",
    "output_file": "where to write annotations.json.gz",
    "skip_invalid": "leave invalid assets out instead of failing",
    "report": "write a JSON report of every problem to this file",
})
def prepare_annotations(c: Context, save_dir: str, output_file: str, skip_invalid: bool = False,
                        report: str = "") -> None:
    """Validate and merge every asset's annotations into annotations.json.gz."""
    _run(c, "prepare-annotations", "--save-dir", save_dir, "--output-file", output_file,
         "--skip-invalid" if skip_invalid else None, *(["--report", report] if report else []))


@task(help={
    "assets_dir": "directory to archive (its base name becomes the top-level folder)",
    "output": "the .tar to write, e.g. release/2024_02_01/assets.tar",
    "exclude": "another name pattern to leave out (repeatable)",
    "source_date_epoch": "mtime for every member (default $SOURCE_DATE_EPOCH, else 0)",
}, iterable=["exclude"])
def tar(c: Context, assets_dir: str, output: str, exclude: list[str] | None = None,
        source_date_epoch: int | None = None) -> None:
    """Build a byte-for-byte reproducible tar of a directory, hashing every member."""
    excludes = [w for pattern in exclude or [] for w in ("--exclude", pattern)]
    _run(c, "tar", "--assets-dir", assets_dir, "--output", output, *excludes,
         *(["--source-date-epoch", source_date_epoch] if source_date_epoch is not None else []))


@task(help={"release_dir": "the release directory", "version": "dataset version, YYYY_MM_DD"})
def manifest(c: Context, release_dir: str, version: str) -> None:
    """Write manifest.json and SHA256SUMS for a release directory."""
    _run(c, "manifest", "--release-dir", release_dir, "--version", version)


@task(help={"release_dir": "the release directory", "members": "also re-hash every tar member"})
def verify(c: Context, release_dir: str, members: bool = False) -> None:
    """Re-hash a release directory against its manifest."""
    _run(c, "verify", "--release-dir", release_dir, "--members" if members else None)


def _s3_words(bucket: str, endpoint_url: str, profile: str, remote: str) -> list[object]:
    return [*(["--bucket", bucket] if bucket else []),
            *(["--endpoint-url", endpoint_url] if endpoint_url else []),
            *(["--profile", profile] if profile else []),
            *(["--remote", remote] if remote else [])]


S3_HELP = {
    "bucket": "bucket name (default $BUCKET)",
    "endpoint_url": "S3 API endpoint (default $AWS_ENDPOINT_URL_S3/$AWS_ENDPOINT_URL, else R2)",
    "profile": "credentials profile",
    "remote": "an rclone S3 remote, NAME:bucket/prefix",
}


@task(help={
    "release_dir": "the release directory (with manifest.json)",
    "prefix": "key prefix (default: the manifest's version)",
    "chunk_size": "part size, 5M to 5G (default: chosen per file)",
    "upload_concurrency": "parts of one file in flight at once (default: grows while the rate grows)",
    "transfers": "files at once (default 8, sharing the connections)",
    "force": "overwrite differing objects or a published version",
    "dry_run": "print what would be uploaded and stop",
    **S3_HELP,
})
def upload(c: Context, release_dir: str, bucket: str = "", endpoint_url: str = "", profile: str = "",
           remote: str = "", prefix: str = "", chunk_size: str = "", upload_concurrency: int = 0,
           transfers: int = 0, force: bool = False, dry_run: bool = False) -> None:
    """Resumable, verified multipart upload of a release to R2 or any S3 endpoint."""
    tunables = {"--chunk-size": chunk_size, "--upload-concurrency": upload_concurrency,
                "--transfers": transfers}  # unset: chosen per file and link
    _run(c, "upload", "--release-dir", release_dir, *_s3_words(bucket, endpoint_url, profile, remote),
         *(["--prefix", prefix] if prefix else []), *[w for flag, value in tunables.items() if value
                                                     for w in (flag, value)],
         "--force" if force else None, "--dry-run" if dry_run else None)


@task(help={"older_than": "only uploads started longer ago than this (30m, 24h, 7d)",
            "prefix": "only uploads under this key prefix", "dry_run": "list only", **S3_HELP})
def cleanup(c: Context, bucket: str = "", endpoint_url: str = "", profile: str = "", remote: str = "",
            prefix: str = "", older_than: str = "24h", dry_run: bool = False) -> None:
    """List and abort abandoned multipart uploads."""
    _run(c, "cleanup", *_s3_words(bucket, endpoint_url, profile, remote),
         *(["--prefix", prefix] if prefix else []), "--older-than", older_than,
         "--dry-run" if dry_run else None)


@task(help={
    "version": "dataset version, e.g. 2023_09_23",
    "what": "annotations, assets, features, holodeck-base or all (default all)",
    "path": "where versions live (default ~/.objathor-assets)",
    "base_url": "serve files from {URL}/{VERSION}/... (default: the public table)",
    "uids": "fetch only these assets, comma-separated",
    "uids_file": "fetch only the uids listed in this file",
    "require_checksums": "refuse a version without manifest.json",
    "slice": "K/N: of a sharded release, only the shards whose index is K mod N",
})
def download(c: Context, version: str, what: str = "all", path: str = "", base_url: str = "",
             uids: str = "", uids_file: str = "", require_checksums: bool = False, slice: str = "") -> None:
    """Download a dataset version into ~/.objathor-assets, verified and resumable."""
    _run(c, "download", what, "--version", version, *(["--path", path] if path else []),
         *(["--base-url", base_url] if base_url else []), *(["--uids", uids] if uids else []),
         *(["--uids-file", uids_file] if uids_file else []),
         "--require-checksums" if require_checksums else None, *(["--slice", slice] if slice else []))


def _release_help() -> dict[str, str]:
    """The release task's option help, from the one definition of the settings."""
    from objathor_release.settings import RUN_OPTIONS, ReleaseConfig

    settings = {name: s.help for name, s in ReleaseConfig.settings().items() if s.flag}
    return {**settings, **{o.name: o.help for o in RUN_OPTIONS if o.invoke}}


@task(help=_release_help())
def release(c: Context, version: str, assets_dir: str = "", features_dir: str = "", holodeck_dir: str = "",
            release_dir: str = "", config: str = "", bucket: str = "", prefix: str = "",
            endpoint_url: str = "", profile: str = "", remote: str = "", chunk_size: str = "",
            upload_concurrency: int = 0, transfers: int = 0, public_base_url: str = "",
            shard_size: str = "", executor: str = "", ray_address: str = "", only_shard: int = -1,
            finish: bool = False, force: bool = False, dry_run: bool = False) -> None:
    """Release a version: annotations, tar, manifest, verify, upload, remote verify."""
    options = {"--assets-dir": assets_dir, "--features-dir": features_dir, "--holodeck-dir": holodeck_dir,
               "--release-dir": release_dir, "--config": config, "--prefix": prefix,
               "--chunk-size": chunk_size, "--upload-concurrency": upload_concurrency,
               "--transfers": transfers, "--public-base-url": public_base_url, "--shard-size": shard_size,
               "--executor": executor, "--ray-address": ray_address,
               "--only-shard": str(only_shard) if only_shard >= 0 else ""}
    _run(c, "release", "--version", version, *_s3_words(bucket, endpoint_url, profile, remote),
         *[w for flag, value in options.items() if value for w in (flag, value)],
         "--finish" if finish else None, "--force" if force else None, "--dry-run" if dry_run else None)


@task(help={"workdir": "scratch directory (default demo/)", "assets": "number of sample assets"})
def demo(c: Context, workdir: str = "demo", assets: int = 50) -> None:
    """Release a generated sample to an embedded local S3 endpoint and download it back."""
    import os

    argv = ["demo", "--workdir", os.path.abspath(workdir), "--assets", str(assets)]
    with c.cd(os.path.dirname(os.path.abspath(__file__))):  # devtools is importable from the checkout
        c.run(f"{shlex.quote(sys.executable)} -m devtools {shlex.join(argv)}", pty=sys.stdout.isatty())


# ---------------------------------------------------------------- docker tasks (see Dockerfile)


def _docker(call, *args, **kwargs):
    """Run a dockerimage function; a ReleaseError (e.g. no engine) becomes invoke.Exit with its line."""
    from invoke import Exit

    from objathor_release.errors import ReleaseError

    try:
        return call(*args, **kwargs)
    except ReleaseError as exc:
        raise Exit(f"objathor-release: error: {exc}", code=exc.exit_code) from None


@task(help={
    "tag": "image name to create (default objathor-release-base:bookworm)",
    "rebuild": "make it again even when an image of that name exists",
})
def docker_base(c: Context, tag: str = "", rebuild: bool = False) -> None:
    """Build the local Debian base image objathor-release-base:bookworm (debootstrap + docker import)."""
    from devtools import dockerimage

    _docker(dockerimage.build_base_image, tag or dockerimage.LOCAL_BASE_IMAGE, rebuild=rebuild)


@task(help={
    "base_image": "base image (default: the pinned python:3.12-slim-bookworm digest)",
    "tag": "image name to create (repeatable; default objathor-release:<version> and :latest)",
}, iterable=["tag"])
def docker_build(c: Context, base_image: str = "", tag: list[str] | None = None) -> None:
    """Build and tag the objathor-release image through the docker SDK, printing the build output."""
    from devtools import dockerimage

    _docker(dockerimage.build_image, base_image or dockerimage.PINNED_BASE_IMAGE, tags=tag or None)


@task(help={
    "version": "dataset version, YYYY_MM_DD",
    "assets_dir": "optimized assets directory (mounted read-only)",
    "features_dir": "features directory (optional, mounted read-only)",
    "holodeck_dir": "Holodeck base directory (optional, mounted read-only): builds holodeck.tar",
    "release_dir": "where artifacts are built (default release/VERSION; mounted read-write)",
    "bucket": "bucket name (default $BUCKET)",
    "endpoint_url": "S3 API endpoint (default $AWS_ENDPOINT_URL_S3/$AWS_ENDPOINT_URL, else R2)",
    "image": "image to run (default objathor-release:latest)",
    "network": "docker network, e.g. host to reach an endpoint on this machine's 127.0.0.1",
    "force": "overwrite a published version",
    "dry_run": "do everything local and print what the upload would do",
})
def docker_release(c: Context, version: str, assets_dir: str = "assets", features_dir: str = "",
                   holodeck_dir: str = "", release_dir: str = "", bucket: str = "", endpoint_url: str = "",
                   image: str = "objathor-release:latest", network: str = "", force: bool = False,
                   dry_run: bool = False) -> None:
    """Run the release inside the image, credentials passed from this environment; exits with its code."""
    from invoke import Exit

    from devtools import dockerimage

    code = _docker(dockerimage.release_in_container, version=version, assets_dir=assets_dir,
                   features_dir=features_dir or None, holodeck_dir=holodeck_dir or None,
                   release_dir=release_dir or f"release/{version}",
                   image=image, bucket=bucket or None, endpoint_url=endpoint_url or None,
                   network=network or None,
                   extra_args=[w for w, on in (("--force", force), ("--dry-run", dry_run)) if on])
    if code:
        raise Exit(code=code)
