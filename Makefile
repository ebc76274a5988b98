# objathor-release: every target wires a command to the package; no logic lives here.
# `make help` lists the targets: each .PHONY line's "## text" is its description.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Run by make, the commands' hints name the Make variables (FORCE=1, BUCKET=...) instead of their
# flags. Set per command, not exported: `make test` must not tell the suite it runs under make.
CLI := OBJATHOR_UNDER_MAKE=1 $(PY) -m objathor_release
INSTALLED := $(VENV)/.installed

# Release settings: command line > environment > CONFIG (release.toml) > these defaults.
CONFIG ?= $(wildcard release.toml)
ifneq ($(strip $(CONFIG)),)
include build/release-config.mk
build/release-config.mk: $(CONFIG) | $(INSTALLED)
	$(CLI) config --config $(CONFIG) --make --output $@
endif
VERSION ?=
ASSETS_DIR ?= assets
FEATURES_DIR ?=
HOLODECK_DIR ?=
RELEASE_DIR ?= release/$(VERSION)
BUCKET ?=
PREFIX ?=
ENDPOINT_URL ?=
R2_ACCOUNT_ID ?=
PROFILE ?=
# Empty: chosen per file and link (see docs/upload.md); set them to fix them.
CHUNK_SIZE ?=
UPLOAD_CONCURRENCY ?=
TRANSFERS ?=
EXCLUDES ?=
SOURCE_DATE_EPOCH ?=
PUBLIC_BASE_URL ?=
# Set: assets.tar is split into shards of at most this size (docs/scale.md); EXECUTOR=ray runs them on Ray.
SHARD_SIZE ?=
EXECUTOR ?=
RAY_ADDRESS ?=
SUMMARY ?=
DRY_RUN ?=
FORCE ?=
PYTEST_ARGS ?=
DEMO_DIR ?= demo

.PHONY: help  ## list the targets and the settings they read
help:
	@echo "usage: make <target> [VERSION=YYYY_MM_DD ASSETS_DIR=... BUCKET=...]"
	@echo
	@awk '/^\.PHONY: [a-zA-Z0-9_-]+ +## / { name = $$2; sub(/^[^#]*## /, ""); printf "  %-20s %s\n", name, $$0 }' $(MAKEFILE_LIST)
	@echo
	@echo "settings (current value):"
	@echo "  VERSION=$(VERSION)  (required, YYYY_MM_DD)"
	@echo "  ASSETS_DIR=$(ASSETS_DIR)  FEATURES_DIR=$(FEATURES_DIR)  HOLODECK_DIR=$(HOLODECK_DIR)  RELEASE_DIR=$(RELEASE_DIR)"
	@echo "  BUCKET=$(BUCKET)  PREFIX=$(PREFIX)  ENDPOINT_URL=$(ENDPOINT_URL)  R2_ACCOUNT_ID=$(if $(R2_ACCOUNT_ID),(set),)  PROFILE=$(PROFILE)"
	@echo "  CHUNK_SIZE=$(CHUNK_SIZE)  UPLOAD_CONCURRENCY=$(UPLOAD_CONCURRENCY)  TRANSFERS=$(TRANSFERS)"
	@echo "  EXCLUDES=$(EXCLUDES)  SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH)  PUBLIC_BASE_URL=$(PUBLIC_BASE_URL)  SUMMARY=$(SUMMARY)"
	@echo "  SHARD_SIZE=$(SHARD_SIZE)  EXECUTOR=$(EXECUTOR)  RAY_ADDRESS=$(RAY_ADDRESS)"
	@echo "  DRY_RUN=$(DRY_RUN)  FORCE=$(FORCE)  CONFIG=$(CONFIG)  (credentials: from the environment only)"

# ---------------------------------------------------------------- environment

# uv (itself installed by pip from its own hashed lock) installs the same hashed lock pip would,
# in seconds rather than minutes, and says what it does.
$(INSTALLED): pyproject.toml requirements-dev.lock requirements-uv.lock scripts/install-system-deps
	@echo "installing into $(VENV) from the hashed lock files (first run on this machine)"
	bash scripts/install-system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --require-hashes --no-deps -r requirements-uv.lock
	$(VENV)/bin/uv pip sync --python $(PY) --require-hashes requirements-dev.lock
	$(VENV)/bin/uv pip install --python $(PY) --no-deps -e .
	touch $@

.PHONY: install  ## make .venv and install the package with its test and dev extras and system tools
install: $(INSTALLED)

.PHONY: lock  ## regenerate requirements.lock, requirements-dev.lock and requirements-uv.lock (pinned, with hashes)
lock: $(INSTALLED)
	$(VENV)/bin/uv pip compile pyproject.toml --universal --python-version 3.10 --generate-hashes --quiet -o requirements.lock
	$(VENV)/bin/uv pip compile pyproject.toml --extra test --extra dev --extra ray --universal --python-version 3.10 --generate-hashes --quiet -o requirements-dev.lock
	grep -o '^uv==[^ ]*' requirements-dev.lock | $(VENV)/bin/uv pip compile - --universal --python-version 3.10 --generate-hashes --quiet --no-header -o requirements-uv.lock

.PHONY: lint  ## ruff and mypy over the package, tests, benchmarks and tasks
lint: $(INSTALLED)
	$(VENV)/bin/ruff check objathor_release devtools tests benchmarks tasks.py
	$(VENV)/bin/mypy

.PHONY: test  ## lint, then the whole test suite (installs first when .venv is missing)
test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: demo  ## release a generated sample to an embedded local S3 endpoint and download it back
demo: $(INSTALLED)
	$(PY) -m devtools demo --workdir '$(DEMO_DIR)'

.PHONY: bench  ## run every benchmark; writes benchmarks/RESULTS.md and a PNG chart each
bench: $(INSTALLED)
	$(PY) benchmarks/run_all.py

# ---------------------------------------------------------------- the release, as file targets
# Each artifact is rebuilt only when one of its inputs (listed by the package: INPUTS_MK below) changed;
# publishing leaves a stamp (.published-BUCKET) that the package writes after the remote copy verified.

.DELETE_ON_ERROR:

# Sharded (SHARD_SIZE=...), assets.tar is made as its shards, which Make tracks through one stamp file.
ASSETS_TAR = $(if $(SHARD_SIZE),$(RELEASE_DIR)/.assets.shards,$(RELEASE_DIR)/assets.tar)
ARTIFACTS = $(RELEASE_DIR)/annotations.json.gz $(ASSETS_TAR) $(if $(FEATURES_DIR),$(RELEASE_DIR)/features.tar) \
	$(if $(HOLODECK_DIR),$(RELEASE_DIR)/holodeck.tar)
TAR_FLAGS = $(foreach p,$(EXCLUDES),--exclude '$(p)') $(if $(SOURCE_DATE_EPOCH),--source-date-epoch $(SOURCE_DATE_EPOCH))
# Only the tunables that are set are passed: unset, the upload chooses them per file and link.
UPLOAD_FLAGS = $(if $(CHUNK_SIZE),--chunk-size '$(CHUNK_SIZE)') \
	$(if $(UPLOAD_CONCURRENCY),--upload-concurrency '$(UPLOAD_CONCURRENCY)') $(if $(TRANSFERS),--transfers '$(TRANSFERS)')
PUBLISH_FLAGS = --version '$(VERSION)' --release-dir '$(RELEASE_DIR)' --bucket '$(BUCKET)' \
	$(if $(PREFIX),--prefix '$(PREFIX)') $(if $(ENDPOINT_URL),--endpoint-url '$(ENDPOINT_URL)') \
	$(if $(PROFILE),--profile '$(PROFILE)') $(UPLOAD_FLAGS) \
	$(if $(PUBLIC_BASE_URL),--public-base-url '$(PUBLIC_BASE_URL)') $(if $(SUMMARY),--summary '$(SUMMARY)') \
	$(if $(FORCE),--force)
# Given on the command line, the account id reaches the commands through the environment, unechoed.
ifneq ($(strip $(R2_ACCOUNT_ID)),)
export R2_ACCOUNT_ID
endif

.PHONY: release  ## build, verify, upload and remotely verify VERSION (needs VERSION, ASSETS_DIR, BUCKET)
release: release-settings $(if $(DRY_RUN),release-dry-run,$(RELEASE_DIR)/.published-$(BUCKET))
	@$(if $(DRY_RUN),:,test '$(RELEASE_DIR)/.published-$(BUCKET)' -nt '$(RELEASE_DIR)/.make-started' \
		|| echo "release $(VERSION): up to date: published to $(BUCKET) and no input or setting changed since")

SHARD_FLAGS = $(if $(SHARD_SIZE),--shard-size '$(SHARD_SIZE)') $(if $(EXECUTOR),--executor '$(EXECUTOR)') \
	$(if $(RAY_ADDRESS),--ray-address '$(RAY_ADDRESS)')
CHECK_SETTINGS = $(CLI) release --check-only $(PUBLISH_FLAGS) --assets-dir '$(ASSETS_DIR)' \
	$(if $(FEATURES_DIR),--features-dir '$(FEATURES_DIR)') $(if $(HOLODECK_DIR),--holodeck-dir '$(HOLODECK_DIR)') \
	$(SHARD_FLAGS)

# The artifacts' input files come from the package, the one place that knows them (the list
# `objathor-release release` fingerprints): `objathor-release deps` writes them to INPUTS_MK as rules
# (RELEASE_DIR/assets.tar: its files ...), which is included here, the gcc -MMD way. Make remakes it,
# and restarts, when a folder it lists changed or it was made with other ASSETS_DIR, FEATURES_DIR,
# HOLODECK_DIR, EXCLUDES or SOURCE_DATE_EPOCH; it is only written once the settings are good
# (release-settings then says what is wrong).
INPUTS_MK = $(RELEASE_DIR)/.inputs.mk
ifneq ($(filter release release-dry-run prepare-annotations tar manifest $(RELEASE_DIR)/%,$(MAKECMDGOALS)),)
-include $(INPUTS_MK)
ifneq ($(strip $(ASSETS_DIR) $(FEATURES_DIR) $(HOLODECK_DIR) $(EXCLUDES) $(or $(SOURCE_DATE_EPOCH),0) $(SHARD_SIZE)),$(INPUTS_SETTINGS))
$(INPUTS_MK): FORCE
endif
endif

$(INPUTS_MK): | $(INSTALLED)
	@if $(CHECK_SETTINGS) --dry-run >/dev/null 2>&1; then \
		$(CLI) deps --quiet --assets-dir '$(ASSETS_DIR)' $(if $(FEATURES_DIR),--features-dir '$(FEATURES_DIR)') \
			$(if $(HOLODECK_DIR),--holodeck-dir '$(HOLODECK_DIR)') --release-dir '$(RELEASE_DIR)' $(TAR_FLAGS) \
			$(if $(SHARD_SIZE),--shard-size '$(SHARD_SIZE)') --output '$@'; fi

.PHONY: FORCE
FORCE:

.PHONY: release-settings  ## check the release settings and that the bucket answers, and stop (make release runs it first)
# For make release (and make release-settings) it also asks the bucket (one ListObjectsV2), before any
# build step; DRY_RUN=1 and the local targets (tar, manifest...) send no request.
release-settings: $(INSTALLED)
	@$(CHECK_SETTINGS) $(if $(and $(filter release release-settings,$(MAKECMDGOALS)),$(if $(DRY_RUN),,1)),,--dry-run)
	@mkdir -p '$(RELEASE_DIR)' && touch '$(RELEASE_DIR)/.make-started'  # release says "up to date" when nothing published after this

# A sharded release as separate jobs (a CI matrix: release.yml): the plan, one job per shard, the finish.
# Every job needs the same VERSION, ASSETS_DIR, SHARD_SIZE and CONFIG; EXCLUDES reach them only through CONFIG.
DISTRIBUTED = $(CLI) release $(PUBLISH_FLAGS) --assets-dir '$(ASSETS_DIR)' --shard-size '$(SHARD_SIZE)' \
	$(if $(CONFIG),--config '$(CONFIG)') $(if $(FEATURES_DIR),--features-dir '$(FEATURES_DIR)') \
	$(if $(HOLODECK_DIR),--holodeck-dir '$(HOLODECK_DIR)')
distributed-settings = $(if $(SHARD_SIZE),,$(error $(1) needs SHARD_SIZE=..., the same in every job)) \
	$(if $(and $(DRY_RUN),$(filter-out release-plan,$(1))),$(error $(1) does not dry-run: make release DRY_RUN=1 SHARD_SIZE=... shows the whole sharded release)) \
	$(if $(and $(EXCLUDES),$(if $(CONFIG),,1)),$(error $(1): put EXCLUDES in a release.toml and pass CONFIG=..., so every job reads the same list))

.PHONY: release-plan  ## print the shards of ASSETS_DIR at SHARD_SIZE as JSON (the matrix of the shard jobs)
release-plan: $(INSTALLED)
	@$(call distributed-settings,release-plan)
	@$(CLI) plan --quiet --assets-dir '$(ASSETS_DIR)' --shard-size '$(SHARD_SIZE)' --json \
		$(foreach p,$(EXCLUDES),--exclude '$(p)')

.PHONY: release-shard  ## build, upload and verify shard SHARD=K of a sharded release (one job of a matrix)
release-shard: release-settings
	@$(call distributed-settings,release-shard)
	$(if $(SHARD),,$(error release-shard needs SHARD=K, one of the indexes make release-plan prints))
	$(DISTRIBUTED) --only-shard '$(SHARD)'

.PHONY: release-finish  ## after every release-shard job: build the rest, merge the shards, publish the manifest last
release-finish: release-settings
	@$(call distributed-settings,release-finish)
	$(DISTRIBUTED) --finish

.PHONY: release-dry-run  ## everything local, then print what the upload would do (make release DRY_RUN=1)
release-dry-run: $(RELEASE_DIR)/manifest.json | release-settings
	$(CLI) publish --dry-run $(PUBLISH_FLAGS)

.PHONY: prepare-annotations  ## validate and merge the annotations into RELEASE_DIR/annotations.json.gz
prepare-annotations: $(RELEASE_DIR)/annotations.json.gz

.PHONY: tar  ## build RELEASE_DIR/assets.tar, or its shards with SHARD_SIZE (and features.tar, holodeck.tar when set)
tar: $(ASSETS_TAR) $(if $(FEATURES_DIR),$(RELEASE_DIR)/features.tar) $(if $(HOLODECK_DIR),$(RELEASE_DIR)/holodeck.tar)

.PHONY: manifest  ## write RELEASE_DIR/manifest.json and SHA256SUMS and verify them
manifest: $(RELEASE_DIR)/manifest.json

.PHONY: verify  ## re-hash RELEASE_DIR, every tar member included, against its manifest
verify: $(INSTALLED)
	$(CLI) verify --release-dir '$(RELEASE_DIR)' --members

$(RELEASE_DIR)/annotations.json.gz: | release-settings
	$(CLI) prepare-annotations --save-dir '$(ASSETS_DIR)' --output-file '$@'

$(RELEASE_DIR)/assets.tar: | release-settings
	$(CLI) tar --assets-dir '$(ASSETS_DIR)' --output '$@' $(TAR_FLAGS)

$(RELEASE_DIR)/.assets.shards: | release-settings
	$(CLI) tar --assets-dir '$(ASSETS_DIR)' --output '$(RELEASE_DIR)/assets.tar' --shard-size '$(SHARD_SIZE)' $(TAR_FLAGS)
	touch '$@'

$(RELEASE_DIR)/features.tar: | release-settings
	$(CLI) tar --assets-dir '$(FEATURES_DIR)' --output '$@' $(TAR_FLAGS)

# Holodeck's base data keeps every file (its thor_object_data/annotations.json.gz is data); only EXCLUDES apply.
$(RELEASE_DIR)/holodeck.tar: | release-settings
	$(CLI) tar --holodeck-base --assets-dir '$(HOLODECK_DIR)' --output '$@' $(TAR_FLAGS)

$(RELEASE_DIR)/manifest.json: $(ARTIFACTS)
	$(CLI) manifest --release-dir '$(RELEASE_DIR)' --version '$(VERSION)'
	$(CLI) verify --release-dir '$(RELEASE_DIR)'

$(RELEASE_DIR)/.published-$(BUCKET): $(RELEASE_DIR)/manifest.json | release-settings
	$(CLI) publish $(PUBLISH_FLAGS)

.PHONY: upload  ## upload RELEASE_DIR as it is (resumable; skips what is already there)
upload: $(INSTALLED)
	$(CLI) upload --release-dir '$(RELEASE_DIR)' --bucket '$(BUCKET)' $(if $(PREFIX),--prefix '$(PREFIX)') \
		$(if $(ENDPOINT_URL),--endpoint-url '$(ENDPOINT_URL)') $(UPLOAD_FLAGS) $(if $(FORCE),--force) $(if $(DRY_RUN),--dry-run)

.PHONY: download  ## download VERSION into ~/.objathor-assets (BASE_URL=..., WHAT=all|assets|...)
download: $(INSTALLED)
	$(CLI) download $(or $(WHAT),all) --version '$(VERSION)' $(if $(BASE_URL),--base-url '$(BASE_URL)') \
		$(if $(DOWNLOAD_PATH),--path '$(DOWNLOAD_PATH)')

.PHONY: cleanup  ## abort multipart uploads in BUCKET abandoned for over a day
cleanup: $(INSTALLED)
	$(CLI) cleanup --bucket '$(BUCKET)' $(if $(ENDPOINT_URL),--endpoint-url '$(ENDPOINT_URL)')

# ---------------------------------------------------------------- docker (see Dockerfile)
BASE_IMAGE ?=
IMAGE ?= objathor-release:latest
DOCKER_NETWORK ?=

.PHONY: docker-base  ## build the local base image objathor-release-base:bookworm (debootstrap; for hosts that cannot pull)
docker-base: $(INSTALLED)
	$(PY) -m invoke docker-base

.PHONY: docker-build  ## build the image objathor-release:<version> and :latest (BASE_IMAGE=... instead of the pinned base)
docker-build: $(INSTALLED)
	$(PY) -m invoke docker-build $(if $(BASE_IMAGE),--base-image '$(BASE_IMAGE)')

.PHONY: docker-release  ## the release inside the image (VERSION, ASSETS_DIR, FEATURES_DIR, HOLODECK_DIR, BUCKET; credentials from the environment)
docker-release: $(INSTALLED)
	$(PY) -m invoke docker-release --version '$(VERSION)' --assets-dir '$(ASSETS_DIR)' --release-dir '$(RELEASE_DIR)' \
		$(if $(FEATURES_DIR),--features-dir '$(FEATURES_DIR)') $(if $(HOLODECK_DIR),--holodeck-dir '$(HOLODECK_DIR)') \
		$(if $(BUCKET),--bucket '$(BUCKET)') $(if $(ENDPOINT_URL),--endpoint-url '$(ENDPOINT_URL)') --image '$(IMAGE)' \
		$(if $(DOCKER_NETWORK),--network '$(DOCKER_NETWORK)') $(if $(FORCE),--force) $(if $(DRY_RUN),--dry-run)

.PHONY: clean  ## remove build output, caches and the demo directory (not .venv)
clean:
	rm -rf demo build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache benchmarks/work
