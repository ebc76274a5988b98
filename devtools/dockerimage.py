"""The Docker image: a local Debian base, the image build, and runs inside a container.

Everything goes through the ``docker`` Python SDK, so no ``docker`` CLI is needed:

* :func:`build_base_image` makes ``objathor-release-base:bookworm`` from Debian packages
  (debootstrap a minimal bookworm root with python3, python3-venv and ca-certificates, then
  ``docker import``) for machines that cannot pull the pinned base image.
* :func:`build_image` writes the wheelhouse the Dockerfile installs from (the lock file's wheels
  for the base image's own Python and platform, hash-checked by ``pip download --require-hashes``,
  plus the project's wheel) and builds and tags the image, printing the build output as it comes.
* :func:`run_container` runs the image with arguments, printing the container's stdout and stderr
  as they come, and returns its exit code; :func:`release_in_container` runs ``release`` with the
  asset and release directories mounted and the credentials passed from the caller's environment.

Credentials never become build arguments or layers: they reach the container only as environment
variables at run time, and only the names in :data:`FORWARDED_ENV` that the caller has set.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from objathor_release._version import __version__
from objathor_release.build.epoch import from_environment
from objathor_release.errors import ReleaseError, UsageError

REPO = Path(__file__).resolve().parent.parent

#: The default base: the official image, pinned by digest.
#: See the README ("Docker") for where this digest comes from and how to bump it.
PINNED_BASE_IMAGE = (
    "python:3.12-slim-bookworm@sha256:032c52613401895aa3d418a4c563d2d05f993bc3ecc065c8f4e2280978acd249"
)
#: The base built from Debian packages by :func:`build_base_image`.
LOCAL_BASE_IMAGE = "objathor-release-base:bookworm"
IMAGE_REPOSITORY = "objathor-release"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
#: The user the image runs as (``USER`` in the Dockerfile).
CONTAINER_UID = 10001
#: Where the build context keeps the wheelhouse (``wheels/`` and ``project/``; see .dockerignore).
DOCKER_CONTEXT = Path(".docker-context")
#: What the project's wheel is built from (copied to a clean folder first).
WHEEL_SOURCES = ("pyproject.toml", "README.md", "LICENSE", "objathor_release", "schemas")
#: Label of the Dockerfile's build stage, to find its leftover images.
BUILD_STAGE_LABEL = "org.objathor-release.stage=build"

#: Environment variables passed from the caller to the container, when set. Values are never
#: printed; only these names are forwarded.
FORWARDED_ENV = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
    "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
    "R2_ACCOUNT_ID", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY", "OBJATHOR_SIGNING_KEY",
    "BUCKET", "SOURCE_DATE_EPOCH", "OBJATHOR_BASE_URL", "OBJATHOR_PROGRESS", "OBJATHOR_PROGRESS_INTERVAL",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."


# --------------------------------------------------------------------------- the engine


def connect(client: Any = None) -> Any:
    """Return a docker SDK client that answers a ping, or raise UsageError saying what to do."""
    if client is not None:
        return client
    try:
        import docker
        import docker.errors
    except ImportError:
        raise UsageError("the docker tasks need the docker SDK: run 'make install'") from None
    try:
        found = docker.from_env(timeout=300)
        found.ping()
    except docker.errors.DockerException as exc:
        raise UsageError(
            f"cannot reach the Docker engine ({_one_line(exc)}): start it or set DOCKER_HOST"
        ) from None
    return found


def engine_unreachable_reason() -> str | None:
    """None when a Docker engine answers, else one line saying why not (for test skips)."""
    try:
        connect().close()
    except UsageError as exc:
        return str(exc)
    return None


def split_ref(ref: str) -> tuple[str, str]:
    """``name:tag`` -> (name, tag); a name without a tag gets ``latest``."""
    repository, _, tag = ref.rpartition(":")
    if not repository or "/" in tag:
        return ref, "latest"
    return repository, tag


def image_id(client: Any, ref: str) -> str | None:
    """The id of a local image, or None when there is none by that name."""
    import docker.errors

    try:
        return str(client.images.get(ref).id)
    except docker.errors.ImageNotFound:
        return None


# --------------------------------------------------------------------------- the local base image


def _stream_process(argv: Sequence[str], out: TextIO, env: Mapping[str, str] | None = None) -> None:
    """Run ``argv``, copying its combined output to ``out`` line by line; raise on failure."""
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=None if env is None else dict(env)) as proc:
        assert proc.stdout is not None
        tail: list[str] = []
        for line in proc.stdout:
            out.write(line)
            out.flush()
            tail = (tail + [line.strip()])[-3:]
    if proc.returncode:
        raise ReleaseError(f"{Path(argv[0]).name} failed with exit code {proc.returncode}: "
                           f"{' | '.join(tail)}")


def _prune_root(root: Path) -> None:
    """Drop what a container never needs: package caches and lists, docs, man pages, logs."""
    for pattern in ("var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*_*",
                    "usr/share/doc/*", "usr/share/man/*", "usr/share/info/*", "var/log/*.log",
                    "var/log/apt/*"):
        for path in root.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def build_base_image(tag: str = LOCAL_BASE_IMAGE, *, suite: str = DEBIAN_SUITE,
                     mirror: str = DEBIAN_MIRROR, packages: Iterable[str] = BASE_PACKAGES,
                     rebuild: bool = False, client: Any = None, out: TextIO = sys.stdout) -> str:
    """Build ``tag`` from Debian packages (debootstrap + ``docker import``); return its image id.

    Reuses an existing image of that name unless ``rebuild``. Needs root and debootstrap; a
    ``--variant=minbase`` root with only ``packages`` takes well under a minute to make.
    """
    client = connect(client)
    packages = tuple(packages)
    found = image_id(client, tag)
    if found and not rebuild:
        print(f"{tag} exists ({found[:19]}); pass --rebuild to make it again", file=out)
        return found
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not os.access(debootstrap, os.X_OK):
        raise UsageError("debootstrap is not installed: apt-get install debootstrap "
                         "(or run scripts/install-system-deps as root)")
    if os.geteuid() != 0:
        raise UsageError("debootstrap needs root: run 'invoke docker-base' as root (or with sudo)")
    with tempfile.TemporaryDirectory(prefix="objathor-base-", dir="/var/tmp") as tmp:
        root = Path(tmp) / "root"
        print(f"debootstrap {suite} ({', '.join(packages)}) from {mirror}", file=out, flush=True)
        _stream_process([debootstrap, "--variant=minbase", f"--include={','.join(packages)}",
                         suite, str(root), mirror], out)
        _prune_root(root)
        tarball = Path(tmp) / "root.tar"
        subprocess.run(["tar", "--numeric-owner", "--xattrs", "-C", str(root), "-cf", str(tarball), "."],
                       check=True)
        repository, name_tag = split_ref(tag)
        print(f"docker import -> {tag}", file=out, flush=True)
        client.api.import_image_from_file(
            str(tarball), repository=repository, tag=name_tag,
            changes=["ENV LANG=C.UTF-8", 'CMD ["python3"]',
                     f"LABEL org.opencontainers.image.description=\"Debian {suite} minbase with "
                     f"{' '.join(packages)} (objathor-release docker-base)\""],
        )
    made = image_id(client, tag)
    if made is None:
        raise ReleaseError(f"docker import did not create {tag}: see the output above")
    return made


# --------------------------------------------------------------------------- the wheelhouse


@dataclass(frozen=True)
class TargetPython:
    """The interpreter and platform inside a base image, which the wheelhouse must match."""

    version: tuple[int, int, int]
    machine: str
    glibc: tuple[int, int]

    @property
    def abi(self) -> str:
        return f"cp{self.version[0]}{self.version[1]}"

    def platform_tags(self) -> list[str]:
        """Every manylinux tag this glibc accepts, newest first (pip does not expand them)."""
        major, minor = self.glibc
        tags = [f"manylinux_{major}_{m}_{self.machine}" for m in range(minor, 4, -1)]
        legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        tags += [f"{name}_{self.machine}" for m, name in legacy.items() if m <= minor]
        return tags

    def marker_environment(self) -> dict[str, str]:
        """Values for PEP 508 markers, so the lock's markers are read for the image, not the host."""
        return {
            "python_version": f"{self.version[0]}.{self.version[1]}",
            "python_full_version": ".".join(map(str, self.version)),
            "implementation_name": "cpython", "platform_python_implementation": "CPython",
            "implementation_version": ".".join(map(str, self.version)),
            "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix",
            "platform_machine": self.machine,
        }


_PROBE = ("import os, platform, sys; print(*sys.version_info[:3], platform.machine(), "
          "os.confstr('CS_GNU_LIBC_VERSION'))")


def probe_python(client: Any, image: str) -> TargetPython:
    """Run ``python3`` in ``image`` and read its version, machine and glibc."""
    import docker.errors

    try:
        raw = client.containers.run(image, ["-c", _PROBE], entrypoint="python3", remove=True,
                                    network_disabled=True, user="65534:65534")
    except docker.errors.DockerException as exc:
        raise UsageError(f"cannot run python3 in base image {image} ({_one_line(exc)}): "
                         "a base image needs python3 on PATH") from None
    words = raw.decode().split()
    m = re.fullmatch(r"(\d+)\.(\d+).*", words[-1]) if len(words) == 6 else None
    if not m or words[4] != "glibc":
        raise UsageError(f"base image {image} is not a glibc Linux with python3 (probe said "
                         f"{raw.decode().strip()!r})")
    return TargetPython(version=(int(words[0]), int(words[1]), int(words[2])), machine=words[3],
                        glibc=(int(m.group(1)), int(m.group(2))))


def lock_for_target(lock_text: str, target: TargetPython) -> str:
    """The lock's requirements that apply to ``target``, markers removed, hashes kept."""
    try:
        from packaging.markers import Marker
    except ImportError:
        raise UsageError("docker-build needs the 'packaging' library: run 'make install'") from None
    env = target.marker_environment()
    kept: list[str] = []
    for block in re.sub(r"\\\n", " ", lock_text).splitlines():
        line = block.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        requirement, _, options = line.partition(" --hash")
        name, _, marker = requirement.partition(";")
        if marker.strip() and not Marker(marker.strip()).evaluate(env):
            continue
        kept.append(f"{name.strip()} --hash{options}")
    return "\n".join(kept) + "\n"


def make_wheelhouse(target: TargetPython, context: Path, *, repo: Path = REPO,
                    source_date_epoch: int = 0, out: TextIO = sys.stdout) -> list[Path]:
    """Write the wheels the Dockerfile installs; return them.

    ``context/wheels``: every wheel of requirements.lock that applies to ``target``, fetched by
    ``pip download --require-hashes`` (so each is checked against the lock's hash);
    ``context/project``: this project's wheel, built with ``SOURCE_DATE_EPOCH`` (byte-identical
    for the same sources). Both are made beside their final place and renamed in, so a failed
    run leaves the previous wheelhouse whole.
    """
    context.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=context))
    try:
        requirements = staging / "requirements.txt"
        requirements.write_text(lock_for_target((repo / "requirements.lock").read_text(), target))
        pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
        platforms = [w for tag in target.platform_tags() for w in ("--platform", tag)]
        print(f"wheelhouse for CPython {'.'.join(map(str, target.version))} on {target.machine} "
              f"(glibc {target.glibc[0]}.{target.glibc[1]}) -> {context}", file=out, flush=True)
        _stream_process([*pip, "download", "--quiet", "--no-deps", "--require-hashes",
                         "--only-binary", ":all:", "--implementation", "cp",
                         "--python-version", f"{target.version[0]}.{target.version[1]}",
                         "--abi", target.abi, "--abi", "abi3", "--abi", "none", *platforms,
                         "--dest", str(staging / "wheels"), "-r", str(requirements)], out)
        # Built from a clean copy of the sources: no stale build/ output, nothing written to the checkout.
        source = staging / "source"
        for name in WHEEL_SOURCES:
            if (repo / name).is_dir():
                shutil.copytree(repo / name, source / name, symlinks=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            elif (repo / name).exists():
                source.mkdir(exist_ok=True)
                shutil.copy2(repo / name, source / name)
        env = {**os.environ, "SOURCE_DATE_EPOCH": str(source_date_epoch)}
        _stream_process([*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(staging / "project"),
                         str(source)], out, env=env)
        for name in ("wheels", "project"):
            shutil.rmtree(context / name, ignore_errors=True)
            (staging / name).rename(context / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sorted(context.glob("*/*.whl"))


# --------------------------------------------------------------------------- the image


def default_source_date_epoch(repo: Path = REPO) -> int:
    """$SOURCE_DATE_EPOCH, else the last commit's time, else 0; UsageError when the variable is bad."""
    epoch = from_environment()
    if epoch is not None:
        return epoch
    try:
        done = subprocess.run(["git", "-C", str(repo), "log", "-1", "--format=%ct"],
                              capture_output=True, text=True, check=True)
        return int(done.stdout.strip())
    except (OSError, subprocess.CalledProcessError, ValueError):
        return 0


def _git_revision(repo: Path) -> str:
    try:
        done = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True)
        return done.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def default_tags() -> list[str]:
    return [f"{IMAGE_REPOSITORY}:{__version__}", f"{IMAGE_REPOSITORY}:latest"]


def ensure_base_image(client: Any, base_image: str, *, out: TextIO = sys.stdout) -> str:
    """Return the local id of ``base_image``, pulling it when missing."""
    import docker.errors

    found = image_id(client, base_image)
    if found:
        return found
    print(f"pulling {base_image}", file=out, flush=True)
    try:
        return str(client.images.pull(base_image).id)
    except docker.errors.DockerException as exc:
        raise UsageError(
            f"cannot pull base image {base_image} ({_one_line(exc)}): without registry access run "
            f"'invoke docker-base' and build with --base-image {LOCAL_BASE_IMAGE}"
        ) from None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _print_build_stream(chunks: Iterator[dict[str, Any]], out: TextIO) -> str | None:
    """Copy the build's output to ``out`` as it comes; return the built image id."""
    built: str | None = None
    plain = not (hasattr(out, "isatty") and out.isatty())
    for chunk in chunks:
        if "stream" in chunk:
            out.write(_ANSI.sub("", chunk["stream"]) if plain else chunk["stream"])
            out.flush()
        elif "status" in chunk:
            print(chunk["status"], file=out, flush=True)
        if "error" in chunk:
            message = " ".join(str(chunk["error"]).split())
            raise ReleaseError(f"docker build failed: {message}")
        aux = chunk.get("aux")
        if isinstance(aux, dict) and "ID" in aux:
            built = str(aux["ID"])
        m = re.match(r"Successfully built ([0-9a-f]+)", chunk.get("stream", ""))
        if m:
            built = built or m.group(1)
    return built


def build_image(base_image: str = PINNED_BASE_IMAGE, *, tags: Sequence[str] | None = None,
                repo: Path = REPO, source_date_epoch: int | None = None, client: Any = None,
                out: TextIO = sys.stdout) -> str:
    """Build the Dockerfile on ``base_image`` and tag it (default ``objathor-release:<version>`` and
    ``:latest``); print the build output as it comes and return the image id."""
    client = connect(client)
    tags = list(tags or default_tags())
    epoch = default_source_date_epoch(repo) if source_date_epoch is None else source_date_epoch
    ensure_base_image(client, base_image, out=out)
    target = probe_python(client, base_image)
    created = _dt.datetime.fromtimestamp(epoch, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    buildargs = {"BASE_IMAGE": base_image, "SOURCE_DATE_EPOCH": str(epoch), "VERSION": __version__,
                 "REVISION": _git_revision(repo), "CREATED": created}
    context = repo / DOCKER_CONTEXT
    context.mkdir(parents=True, exist_ok=True)
    with open(context / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time per checkout: they share the wheelhouse
        make_wheelhouse(target, context, repo=repo, source_date_epoch=epoch, out=out)
        print(f"building {', '.join(tags)} on {base_image}", file=out, flush=True)
        chunks = client.api.build(path=str(repo), dockerfile="Dockerfile", tag=tags[0], buildargs=buildargs,
                                  rm=True, forcerm=True, pull=False, decode=True, use_config_proxy=False)
        built = _print_build_stream(chunks, out) or image_id(client, tags[0])
    if not built:
        raise ReleaseError(f"docker build reported no image for {tags[0]}: see the output above")
    for ref in tags[1:]:
        client.api.tag(built, *split_ref(ref), force=True)
    print(f"built {built[:19]} as {', '.join(tags)}", file=out, flush=True)
    prune_stale_images(client)
    return built


def prune_stale_images(client: Any) -> list[str]:
    """Remove untagged images a rebuild left behind; return their ids.

    Those are earlier builds of the image (labelled with its title) and all but the newest
    leftover of the build stage (kept as the cache for the next build). Tagged images and the
    layers they use are never touched.
    """
    import docker.errors

    def dangling(label: str) -> list[Any]:
        found = client.images.list(filters={"dangling": True, "label": label})
        return sorted(found, key=lambda image: str(image.attrs.get("Created", "")), reverse=True)

    stale = dangling(f"org.opencontainers.image.title={IMAGE_REPOSITORY}") + dangling(BUILD_STAGE_LABEL)[1:]
    removed: list[str] = []
    for image in stale:
        try:
            client.images.remove(image.id, noprune=False)
            removed.append(str(image.id))
        except docker.errors.APIError:
            pass  # in use by a container, or already gone: leave it
    return removed


# --------------------------------------------------------------------------- running the image


def forwarded_environment(environ: Mapping[str, str] | None = None,
                          names: Iterable[str] = FORWARDED_ENV) -> dict[str, str]:
    """The caller's values of ``names`` that are set (never printed)."""
    environ = os.environ if environ is None else environ
    return {name: environ[name] for name in names if environ.get(name)}


def run_container(image: str, args: Sequence[str], *, environment: Mapping[str, str] | None = None,
                  mounts: Mapping[str, tuple[str, str]] | None = None, network: str | None = None,
                  user: str | None = None, entrypoint: Sequence[str] | None = None, client: Any = None,
                  stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr) -> int:
    """Run ``image`` with ``args``; print its stdout/stderr as they come; return its exit code.

    ``mounts`` maps a host path to ``(container path, "ro" or "rw")``; ``entrypoint`` replaces the
    image's. The container is removed afterwards, also on Ctrl-C (which stops it and returns 130).
    """
    import docker.errors

    client = connect(client)
    binds = {str(Path(host).resolve()): {"bind": inner, "mode": mode}
             for host, (inner, mode) in (mounts or {}).items()}
    try:
        host_config = client.api.create_host_config(binds=binds, network_mode=network or None)
        container = client.api.create_container(
            image, command=list(args), environment=dict(environment or {}), user=user or None,
            entrypoint=list(entrypoint) if entrypoint else None, host_config=host_config,
            use_config_proxy=False,
        )
    except docker.errors.DockerException as exc:
        raise UsageError(f"cannot create a container of {image} ({_one_line(exc)})") from None
    cid = container["Id"]
    try:
        stream = client.api.attach(cid, stdout=True, stderr=True, stream=True, logs=True, demux=True)
        client.api.start(cid)
        for out_bytes, err_bytes in stream:
            if out_bytes:
                stdout.write(out_bytes.decode(errors="replace"))
                stdout.flush()
            if err_bytes:
                stderr.write(err_bytes.decode(errors="replace"))
                stderr.flush()
        return int(client.api.wait(cid)["StatusCode"])
    except KeyboardInterrupt:
        client.api.stop(cid, timeout=10)
        return 130
    finally:
        client.api.remove_container(cid, force=True)


def _own_for_container(path: Path, uid: int) -> None:
    """As root, hand ``path`` (a release directory) to the image's user so it can write there."""
    for dirpath, dirnames, filenames in os.walk(path):
        os.chown(dirpath, uid, uid)
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, uid, follow_symlinks=False)


def loopback_network(endpoint_url: str | None, environ: Mapping[str, str] | None,
                     stderr: TextIO) -> str | None:
    """``host`` when the endpoint the release will use is this machine's loopback (a container's own
    127.0.0.1 is not the host's), else None (Docker's default network)."""
    import ipaddress
    import urllib.parse

    env = os.environ if environ is None else environ
    url = endpoint_url or env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or ""
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return None
    print(f"objathor-release: the endpoint {url} is on this machine's loopback: the container runs on the "
          "host network to reach it (DOCKER_NETWORK=NAME or --network chooses another)", file=stderr)
    return "host"


def release_in_container(*, version: str, assets_dir: str | Path, release_dir: str | Path,
                         features_dir: str | Path | None = None, holodeck_dir: str | Path | None = None,
                         image: str = f"{IMAGE_REPOSITORY}:latest",
                         bucket: str | None = None, endpoint_url: str | None = None,
                         network: str | None = None, extra_args: Sequence[str] = (),
                         environ: Mapping[str, str] | None = None, client: Any = None,
                         stdout: TextIO = sys.stdout, stderr: TextIO = sys.stderr) -> int:
    """Run ``objathor-release release`` in ``image``; return the container's exit code.

    The asset (features, Holodeck base) directories are mounted read-only at /data/assets
    (/data/features, /data/holodeck), the release directory read-write at /data/release; the
    credentials and settings in
    :data:`FORWARDED_ENV` come from ``environ`` (default: this process's environment). The
    container runs as the caller's uid:gid so its files belong to the caller; a root caller keeps
    the image's own non-root user and the release directory is handed to it. An endpoint on this
    machine's loopback (127.0.0.1, ::1, localhost) runs the container on the host network unless
    ``network`` says otherwise.
    """
    from objathor_release.settings import validate_version

    validate_version(version)
    assets = Path(assets_dir)
    if not assets.is_dir():
        raise UsageError(f"assets directory {assets} does not exist: pass --assets-dir")
    release = Path(release_dir)
    release.mkdir(parents=True, exist_ok=True)
    mounts = {str(assets): ("/data/assets", "ro"), str(release): ("/data/release", "rw")}
    args = ["release", "--version", version, "--assets-dir", "/data/assets", "--release-dir", "/data/release"]
    if features_dir:
        if not Path(features_dir).is_dir():
            raise UsageError(f"features directory {features_dir} does not exist: fix --features-dir")
        mounts[str(features_dir)] = ("/data/features", "ro")
        args += ["--features-dir", "/data/features"]
    if holodeck_dir:
        if not Path(holodeck_dir).is_dir():
            raise UsageError(f"Holodeck base directory {holodeck_dir} does not exist: fix --holodeck-dir")
        mounts[str(holodeck_dir)] = ("/data/holodeck", "ro")
        args += ["--holodeck-dir", "/data/holodeck"]
    args += [*(["--bucket", bucket] if bucket else []),
             *(["--endpoint-url", endpoint_url] if endpoint_url else [])]
    network = network or loopback_network(endpoint_url, environ, stderr)
    user = None
    if os.geteuid() == 0:
        _own_for_container(release, CONTAINER_UID)
    else:
        user = f"{os.getuid()}:{os.getgid()}"
    return run_container(image, [*args, *extra_args], environment=forwarded_environment(environ),
                         mounts=mounts, network=network, user=user, client=client, stdout=stdout,
                         stderr=stderr)
