# objathor-release: every target wires a command to the package; no logic lives here.
# `make help` lists the targets: each .PHONY line's "## text" is its description.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CLI := $(PY) -m objathor_release
INSTALLED := $(VENV)/.installed

# Release settings (override on the command line or in release.toml via CONFIG).
VERSION ?=
ASSETS_DIR ?= assets
FEATURES_DIR ?=
RELEASE_DIR ?= release/$(VERSION)
BUCKET ?=
ENDPOINT_URL ?=
R2_ACCOUNT_ID ?=
CHUNK_SIZE ?= 64M
UPLOAD_CONCURRENCY ?= 16
TRANSFERS ?= 4
DRY_RUN ?=
FORCE ?=
CONFIG ?=
PYTEST_ARGS ?=

.PHONY: help  ## list the targets and the settings they read
help:
	@echo "usage: make <target> [VERSION=YYYY_MM_DD ASSETS_DIR=... BUCKET=...]"
	@echo
	@grep -E '^\.PHONY: [a-zA-Z0-9_-]+ *## ' $(MAKEFILE_LIST) | sed -E 's/^\.PHONY: ([a-zA-Z0-9_-]+) *## (.*)/  \1|\2/' | column -t -s '|'
	@echo
	@echo "settings (current value):"
	@echo "  VERSION=$(VERSION)  ASSETS_DIR=$(ASSETS_DIR)  FEATURES_DIR=$(FEATURES_DIR)  RELEASE_DIR=$(RELEASE_DIR)"
	@echo "  BUCKET=$(BUCKET)  ENDPOINT_URL=$(ENDPOINT_URL)  R2_ACCOUNT_ID=$(if $(R2_ACCOUNT_ID),(set),)  CONFIG=$(CONFIG)"
	@echo "  CHUNK_SIZE=$(CHUNK_SIZE)  UPLOAD_CONCURRENCY=$(UPLOAD_CONCURRENCY)  TRANSFERS=$(TRANSFERS)  DRY_RUN=$(DRY_RUN)  FORCE=$(FORCE)"

# ---------------------------------------------------------------- environment

$(INSTALLED): pyproject.toml requirements-dev.lock scripts/install-system-deps
	@echo "installing into $(VENV) (first run on this machine; takes a minute)"
	bash scripts/install-system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --require-hashes -r requirements-dev.lock
	$(PY) -m pip install --quiet --no-deps -e .
	touch $@

.PHONY: install  ## make .venv and install the package with its test extras and system tools
install: $(INSTALLED)

.PHONY: lock  ## regenerate requirements.lock and requirements-dev.lock (pinned, with hashes)
lock: $(INSTALLED)
	$(VENV)/bin/uv pip compile pyproject.toml --universal --python-version 3.10 --generate-hashes --quiet -o requirements.lock
	$(VENV)/bin/uv pip compile pyproject.toml --extra test --universal --python-version 3.10 --generate-hashes --quiet -o requirements-dev.lock

.PHONY: lint  ## ruff and mypy over the package, tests, benchmarks and tasks
lint: $(INSTALLED)
	$(VENV)/bin/ruff check objathor_release tests benchmarks tasks.py
	$(VENV)/bin/mypy

.PHONY: test  ## lint, then the whole test suite (installs first when .venv is missing)
test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

.PHONY: demo  ## release a generated sample to an embedded local S3 endpoint and download it back
demo: $(INSTALLED)
	$(CLI) demo

.PHONY: bench  ## run every benchmark; writes benchmarks/RESULTS.md and a PNG chart each
bench: $(INSTALLED)
	$(PY) benchmarks/run_all.py

.PHONY: clean  ## remove build output, caches and the demo directory (not .venv)
clean:
	rm -rf demo build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
