# objathor-release in a pinned image: `docker run objathor-release` prints usage.
#
# Build it with `invoke docker-build` (or `make docker-build`): that writes the wheelhouse this file
# installs from (.docker-context/wheels: every wheel of requirements.lock for the base image's
# Python and platform, checked against the lock's hashes; .docker-context/project: the project's
# own wheel) and passes the build arguments. Nothing is downloaded from PyPI during the build, and
# no build argument or layer ever holds a credential: those come from the environment at
# `docker run` time.
#
# The default base is python:3.12-slim-bookworm pinned by digest (see the README, "Docker", for
# where the digest comes from and how to bump it). Machines that cannot pull it build a Debian
# bookworm base with `invoke docker-base` and pass
# `--build-arg BASE_IMAGE=objathor-release-base:bookworm`: any Debian bookworm base with
# python3 (and python3-venv) works, because the venv is made with whatever python3 the base has.
# Only classic Dockerfile syntax is used, so the legacy builder and BuildKit both build it.

ARG BASE_IMAGE=python:3.12-slim-bookworm@sha256:032c52613401895aa3d418a4c563d2d05f993bc3ecc065c8f4e2280978acd249

# ---------------------------------------------------------------- build: the venv, from wheels only
FROM ${BASE_IMAGE} AS build
ARG SOURCE_DATE_EPOCH=0
SHELL ["/bin/sh", "-eu", "-c"]
LABEL org.objathor-release.stage="build"
# SOURCE_DATE_EPOCH makes pip write hash-checked .pyc files (no timestamps inside them); every file
# of the venv then gets it as its mtime.
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
    SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH}
# The locked dependencies first: this layer stays cached until the lock (or the base) changes.
COPY requirements.lock /tmp/build/requirements.lock
COPY .docker-context/wheels/ /tmp/build/wheels/
RUN python3 -m venv /opt/objathor-release \
 && /opt/objathor-release/bin/python -m pip install --no-index --find-links /tmp/build/wheels \
        --only-binary :all: --require-hashes -r /tmp/build/requirements.lock \
 && find /opt/objathor-release -exec touch --no-dereference --date="@${SOURCE_DATE_EPOCH}" {} + \
 && touch /tmp/build/deps.stamp
# Then the project's own wheel, with no dependencies (they are all above), and pip goes; the entry
# point and a copy of the Makefile (for `make release` in the container) join it.
COPY .docker-context/project/ Makefile docker-entrypoint.sh /tmp/build/project/
RUN /opt/objathor-release/bin/python -m pip install --no-index --no-deps /tmp/build/project/*.whl \
 && /opt/objathor-release/bin/python -m pip uninstall --quiet --yes pip setuptools \
 && /opt/objathor-release/bin/objathor-release --version \
 && install -D -m 644 /tmp/build/project/Makefile /opt/objathor-release/share/Makefile \
 && install -D -m 755 /tmp/build/project/docker-entrypoint.sh \
        /opt/objathor-release/bin/objathor-release-entrypoint \
 && touch /opt/objathor-release/.installed \
 && find /opt/objathor-release -newer /tmp/build/deps.stamp \
        -exec touch --no-dereference --date="@${SOURCE_DATE_EPOCH}" {} +

# ---------------------------------------------------------------- final: no compilers, no pip, non-root
FROM ${BASE_IMAGE}
SHELL ["/bin/sh", "-eu", "-c"]
# make runs the repository's Makefile (`docker run ... objathor-release make release ...`).
# The official python image lacks it; a base that already has it skips apt entirely.
RUN if ! command -v make >/dev/null 2>&1; then \
        apt-get update -qq \
     && apt-get install -y -qq --no-install-recommends make=4.3-4.1 >/dev/null \
     && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin; \
    fi \
 && groupadd --gid 10001 objathor \
 && useradd --no-log-init --uid 10001 --gid objathor --home-dir /home/objathor --create-home \
        --shell /usr/sbin/nologin objathor \
 && mkdir -p /work \
 && chown objathor:objathor /work
ENV PATH=/opt/objathor-release/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/objathor \
    LANG=C.UTF-8
USER 10001:10001
WORKDIR /work
ENTRYPOINT ["/opt/objathor-release/bin/objathor-release-entrypoint"]
ARG BASE_IMAGE
ARG VERSION=0.0.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z
# Everything above is cached across commits; the venv and the labels below change with the code.
COPY --from=build /opt/ /opt/
LABEL org.opencontainers.image.title="objathor-release" \
      org.opencontainers.image.description="Reproducible, verified release tooling for objathor 3D-asset datasets" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/allenai/objathor-release" \
      org.opencontainers.image.url="https://github.com/allenai/objathor-release" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"
