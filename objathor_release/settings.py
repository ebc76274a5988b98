"""Settings: versions, sizes, the upload tunables and the release config file.

One validated object per job, in the style of s3transfer's TransferConfig: the
values are checked once, here, and the code that uses them can trust them.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any

from objathor_release.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

# S3 / R2 multipart limits.
MIN_PART_SIZE = 5 * MiB
MAX_PART_SIZE = 5 * GiB
MAX_PARTS = 10_000
MAX_OBJECT_SIZE = 5 * TiB

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"

VERSION_RE = re.compile(r"^\d{4}_\d{2}_\d{2}$")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(i?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB}


def validate_version(version: str | None) -> str:
    """Return ``version`` if it is a real date written ``YYYY_MM_DD``, else raise UsageError."""
    if not version:
        raise UsageError("VERSION is required: pass a dataset version such as 2024_02_01")
    if not VERSION_RE.match(version):
        raise UsageError(
            f"version {version!r} is not of the form YYYY_MM_DD: use e.g. 2024_02_01"
        )
    try:
        _dt.datetime.strptime(version, "%Y_%m_%d")
    except ValueError:
        raise UsageError(f"version {version!r} is not a real date: use e.g. 2024_02_01") from None
    return version


def parse_size(text: str | int) -> int:
    """Parse ``64M``, ``5MiB``, ``1.5G`` or a plain byte count (binary units, like rclone)."""
    if isinstance(text, int):
        value = text
    else:
        m = _SIZE_RE.match(str(text))
        if not m:
            raise UsageError(f"size {text!r} is not understood: use a number with K, M or G, e.g. 64M")
        value = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if value <= 0:
        raise UsageError(f"size {text!r} must be greater than zero")
    return value


def format_size(n: float) -> str:
    """Human-readable binary size: ``64.0 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def format_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain left-aligned columns separated by two spaces, for summaries on a terminal or in a log."""
    widths = [max(len(cell) for cell in col) for col in zip(head, *rows, strict=True)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in (head, *rows))


def adjust_part_size(file_size: int, part_size: int) -> int:
    """Return a part size valid for ``file_size`` under the S3 limits.

    Like s3transfer's ChunksizeAdjuster: clamp to 5 MiB..5 GiB, then grow (to
    a whole MiB) until the file needs at most 10,000 parts.
    """
    size = min(max(part_size, MIN_PART_SIZE), MAX_PART_SIZE)
    if file_size > size * MAX_PARTS:
        size = math.ceil(file_size / MAX_PARTS / MiB) * MiB
    return size


# The automatic upload plan: over a long link each connection is capped, so speed comes from many.
AUTO_THRESHOLD = 8 * MiB  # a file under this is one PUT when --chunk-size is not given (the AWS CLI's)
PARTS_PER_CONNECTION = 4  # the automatic part size gives every connection at least this many parts
AUTO_MAX_PART = 64 * MiB  # the automatic part size grows past this only to stay within 10,000 parts
MAX_CONNECTIONS = 64  # requests in flight at once in all, whatever the flags: the memory bound
START_CONNECTIONS = 8  # in flight at first when the count adapts
AUTO_TRANSFERS = 8  # files at once when --transfers is not given (they share the connections)


def auto_part_size(file_size: int, connections: int = MAX_CONNECTIONS) -> int:
    """The automatic part size of a multipart file: whole MiB, small enough that each of
    ``connections`` has :data:`PARTS_PER_CONNECTION` parts, at most :data:`AUTO_MAX_PART` unless the
    10,000-part limit needs more, then kept within the S3 limits by :func:`adjust_part_size`.

    With the default ``connections`` it is the part size the build records in the manifest (and the
    upload then uses, so the object's ETag is the one the manifest expects).
    """
    fitted = file_size // (connections * PARTS_PER_CONNECTION) // MiB * MiB
    return adjust_part_size(file_size, min(fitted, AUTO_MAX_PART))


def planned_part_size(file_size: int) -> int | None:
    """The part size the default upload gives a file of ``file_size`` bytes; None: one PUT."""
    if file_size < AUTO_THRESHOLD or file_size <= 0:
        return None
    return auto_part_size(file_size)


@dataclass(frozen=True)
class UploadConfig:
    """Tunables for the multipart upload, named after the rclone flags users know.

    None means automatic: ``chunk_size`` is then chosen per file (see
    :func:`objathor_release.publish.parts.layout_for`), the number of requests in flight grows
    from :data:`START_CONNECTIONS` while the total rate grows, up to :data:`MAX_CONNECTIONS`
    (``upload_concurrency``), and :data:`AUTO_TRANSFERS` files go at once, their parts sharing the
    connections (``transfers``). A given ``upload_concurrency`` fixes the parts of one file in
    flight; every file's requests stay within :data:`MAX_CONNECTIONS` together, at any setting.
    """

    chunk_size: int | None = None
    upload_concurrency: int | None = None
    transfers: int | None = None
    max_part_attempts: int = 5
    multipart_threshold: int | None = None

    def __post_init__(self) -> None:
        if self.chunk_size is not None and not MIN_PART_SIZE <= self.chunk_size <= MAX_PART_SIZE:
            raise UsageError(
                f"--chunk-size {format_size(self.chunk_size)} is out of range: "
                "S3 and R2 parts must be 5 MiB to 5 GiB"
            )
        for name in ("upload_concurrency", "transfers", "max_part_attempts"):
            value = getattr(self, name)
            if value is None and name != "max_part_attempts":
                continue
            if not isinstance(value, int) or value < 1 or value > 1000:
                flag = "--" + name.replace("_", "-")
                raise UsageError(f"{flag} must be a whole number from 1 to 1000, got {value!r}")
        if self.multipart_threshold is not None and self.multipart_threshold < MIN_PART_SIZE:
            raise UsageError("multipart_threshold must be at least 5 MiB")

    @classmethod
    def of(cls, chunk_size: str | int | None = None, upload_concurrency: int | None = None,
           transfers: int | None = None, max_part_attempts: int = 5) -> UploadConfig:
        """The config the flags (or release settings) spell; None or empty: automatic."""
        chunk = parse_size(chunk_size) if chunk_size not in (None, "", "auto") else None
        return cls(chunk_size=chunk, upload_concurrency=upload_concurrency or None,
                   transfers=transfers or None, max_part_attempts=max_part_attempts)

    @property
    def threshold(self) -> int:
        """The size from which a file goes up in parts (smaller: one PUT)."""
        if self.multipart_threshold is not None:
            return self.multipart_threshold
        return self.chunk_size if self.chunk_size is not None else AUTO_THRESHOLD

    @property
    def files_at_once(self) -> int:
        return self.transfers if self.transfers is not None else AUTO_TRANSFERS

    @property
    def adaptive(self) -> bool:
        """Whether the number of requests in flight adapts to the measured rate."""
        return self.upload_concurrency is None

    @property
    def connections(self) -> int:
        """Requests in flight at most, over every file together (the memory bound included)."""
        if self.upload_concurrency is None:
            return MAX_CONNECTIONS
        return min(MAX_CONNECTIONS, self.files_at_once * self.upload_concurrency)

    @property
    def per_file(self) -> int:
        """Parts of one file in flight at most."""
        return min(self.upload_concurrency or MAX_CONNECTIONS, self.connections)


# ---------------------------------------------------------------------------
# JSON Schemas shipped with the package


@cache
def load_schema(name: str) -> dict[str, Any]:
    """Load ``schemas/<name>.schema.json`` (shipped inside the package)."""
    text = (SCHEMA_DIR / f"{name}.schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def config_errors(data: Any) -> list[str]:
    """Problems of a release config against release-config.schema.json, one line each, sorted.

    Plain jsonschema: a config is one small object (the fast validator for the many annotations
    is build/validation's).
    """
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema("release-config"))
    return sorted(f"{err.json_path}: {err.message}" for err in validator.iter_errors(data))


# ---------------------------------------------------------------------------
# The release config file (release.toml), overridden by flags and variables


@dataclass(frozen=True)
class Setting:
    """How one release setting is spelled on each way of running a release (None: it has none there).

    ``flag`` is the option of ``objathor-release release`` (and of ``publish`` unless ``build_only``)
    and of ``invoke release`` (as ``--flag``); ``make`` the variable ``make help`` shows;
    ``env`` the environment variable read when nothing else sets it; ``make_default`` the Makefile's
    default where it differs from the dataclass's. tests/test_settings.py checks each surface
    against these, so a setting added to one and not the others fails there.
    """

    help: str
    flag: str | None = None
    make: str | None = None
    env: str | None = None
    build_only: bool = False
    make_default: str | None = None


def _setting(default: Any = None, **spelling: Any) -> Any:
    meta = {"setting": Setting(**spelling)}
    if isinstance(default, list):
        return field(default_factory=list, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ReleaseConfig:
    """Everything ``objathor-release release`` needs; validated against release-config.schema.json.

    Each field is one setting, with how it is spelled as a flag, a Make variable and an environment
    variable (``ReleaseConfig.settings()``); a release.toml uses the field names.
    """

    version: str | None = _setting(help="dataset version, YYYY_MM_DD", flag="--version", make="VERSION",
                                   env="VERSION")
    assets_dir: str | None = _setting(help="optimized assets directory", flag="--assets-dir",
                                      make="ASSETS_DIR", env="ASSETS_DIR", build_only=True,
                                      make_default="assets")
    features_dir: str | None = _setting(help="features directory (optional)", flag="--features-dir",
                                        make="FEATURES_DIR", env="FEATURES_DIR", build_only=True)
    holodeck_dir: str | None = _setting(
        help="Holodeck base data folder (optional): every file kept, published as holodeck/VERSION.tar",
        flag="--holodeck-dir", make="HOLODECK_DIR", env="HOLODECK_DIR", build_only=True)
    release_dir: str | None = _setting(help="where artifacts are built (default release/VERSION)",
                                       flag="--release-dir", make="RELEASE_DIR", env="RELEASE_DIR",
                                       make_default="release/$(VERSION)")
    bucket: str | None = _setting(help="bucket name (default $BUCKET)", flag="--bucket", make="BUCKET",
                                  env="BUCKET")
    prefix: str | None = _setting(help="key prefix (default VERSION)", flag="--prefix", make="PREFIX")
    endpoint_url: str | None = _setting(
        help="S3 API endpoint (default $AWS_ENDPOINT_URL_S3/$AWS_ENDPOINT_URL, else R2)",
        flag="--endpoint-url", make="ENDPOINT_URL", env="AWS_ENDPOINT_URL_S3")
    r2_account_id: str | None = _setting(
        help="Cloudflare account id: the endpoint is <id>.r2.cloudflarestorage.com",
        make="R2_ACCOUNT_ID", env="R2_ACCOUNT_ID")
    profile: str | None = _setting(help="credentials profile", flag="--profile", make="PROFILE",
                                   env="AWS_PROFILE")
    chunk_size: str | None = _setting(help="part size, 5M to 5G (default: chosen per file)",
                                      flag="--chunk-size", make="CHUNK_SIZE")
    upload_concurrency: int | None = _setting(
        help="parts of one file in flight at once (default: grows while the rate grows)",
        flag="--upload-concurrency", make="UPLOAD_CONCURRENCY")
    transfers: int | None = _setting(help="files at once (default 8, sharing the connections)",
                                     flag="--transfers", make="TRANSFERS")
    source_date_epoch: int | None = _setting(
        help="mtime of every tar member (default $SOURCE_DATE_EPOCH, else 0)",
        make="SOURCE_DATE_EPOCH", env="SOURCE_DATE_EPOCH")
    excludes: list[str] = _setting([], help="patterns the tars leave out on top of the default list",
                                   make="EXCLUDES")
    public_base_url: str | None = _setting(help="public URL the bucket is served from, for the summary",
                                           flag="--public-base-url", make="PUBLIC_BASE_URL")
    shard_size: str | None = _setting(
        help="split assets.tar into shards of at most SIZE, e.g. 2G (default: one assets.tar)",
        flag="--shard-size", make="SHARD_SIZE", build_only=True)
    executor: str | None = _setting(
        help="where shards are built and uploaded: local (processes here; default) or ray",
        flag="--executor", make="EXECUTOR", build_only=True)
    ray_address: str | None = _setting(
        help="the Ray cluster for --executor ray (default $RAY_ADDRESS, else a local Ray)",
        flag="--ray-address", make="RAY_ADDRESS", env="RAY_ADDRESS", build_only=True)

    @classmethod
    def settings(cls) -> dict[str, Setting]:
        """Each field's spelling, in field order."""
        return {f.name: f.metadata["setting"] for f in fields(cls)}

    @classmethod
    def make_variables(cls) -> dict[str, str]:
        """field name -> Make variable, for the settings Make passes on."""
        return {name: s.make for name, s in cls.settings().items() if s.make}

    @classmethod
    def load(cls, path: str | Path | None, overrides: dict[str, Any] | None = None) -> ReleaseConfig:
        """Read ``path`` (TOML, optional), apply non-None ``overrides``, validate."""
        data: dict[str, Any] = {}
        if path is not None:
            p = Path(path)
            try:
                with p.open("rb") as fh:
                    raw = tomllib.load(fh)
            except FileNotFoundError:
                raise UsageError(f"{p}: config file not found: check the --config path") from None
            except tomllib.TOMLDecodeError as exc:
                raise UsageError(f"{p}: not valid TOML ({exc}): fix the file") from None
            data = dict(raw.get("release", raw))
            secrets = sorted(k for k in data if "secret" in k.lower() or "key_id" in k.lower())
            if secrets:
                raise UsageError(f"{p}: {secrets[0]!r}: credentials do not belong in the config file: "
                                 "set them in the environment or a credentials profile")
            problems = config_errors(data)
            if problems:
                raise UsageError(f"{p}: {problems[0]}: fix this setting")
        for key, value in (overrides or {}).items():
            if value is not None:
                data[key] = value
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UsageError(
                f"unknown release setting {unknown[0]!r}: see schemas/release-config.schema.json"
            )
        return cls(**data)


@dataclass(frozen=True)
class RunOption:
    """A flag of ``release``/``publish`` that says how this run goes rather than what is released
    (not in release.toml); spelled like a Setting."""

    name: str
    help: str
    flag: str
    make: str | None = None
    invoke: bool = True
    release_only: bool = False


RUN_OPTIONS = (
    RunOption("config", "release.toml to read settings from", "--config", "CONFIG"),
    RunOption("summary", "also write the summary as JSON to this file", "--summary", "SUMMARY", invoke=False),
    RunOption("force", "overwrite a published version", "--force", "FORCE"),
    RunOption("dry_run", "do everything local and print what the upload would do", "--dry-run", "DRY_RUN"),
    RunOption("remote", "an rclone S3 remote, NAME:bucket/prefix", "--remote"),
    RunOption("rclone_config", "rclone config file", "--rclone-config", invoke=False),
    RunOption("check_only", "validate the settings and stop", "--check-only", invoke=False,
              release_only=True),
    RunOption("only_shard", "build and upload shard K only (one job of a CI matrix)", "--only-shard",
              release_only=True),
    RunOption("finish", "merge the shards' entries, publish the rest and the manifest", "--finish",
              release_only=True),
)
