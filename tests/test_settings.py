"""One definition of the release settings: ReleaseConfig's fields, checked against every surface.

Each field of ``ReleaseConfig`` carries how it is spelled as a flag, a Make variable and an
environment variable (``ReleaseConfig.settings()``); ``RUN_OPTIONS`` lists the flags that say how a
run goes. A setting added to (or dropped from) one of the CLI, ``make help``, the invoke task or
release-config.schema.json and not the others fails a test here.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from objathor_release.cli import ENVIRONMENT_HELP, build_parser
from objathor_release.settings import RUN_OPTIONS, ReleaseConfig, load_schema
from tests.conftest import REPO, run_cli

SETTINGS = ReleaseConfig.settings()
GENERIC_FLAGS = {"--help", "--verbose", "--quiet"}  # every subcommand has them


def flags_of(command: str) -> set[str]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {s for action in sub.choices[command]._actions for s in action.option_strings
            if s.startswith("--")} - GENERIC_FLAGS


def make_env() -> dict[str, str]:
    """The environment without any release setting, so ``make help`` shows the defaults."""
    names = {s.make for s in SETTINGS.values()} | {s.env for s in SETTINGS.values()} | {
        o.make for o in RUN_OPTIONS}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.pop("MAKEFLAGS", None)
    return env


def make_help() -> dict[str, str]:
    done = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "help"], capture_output=True,
                          text=True, env=make_env())
    assert done.returncode == 0, done.stderr
    shown = done.stdout.split("settings (current value):", 1)[1]
    return dict(re.findall(r"\b([A-Z][A-Z0-9_]*)=(\S*)", shown))


def test_the_schema_has_exactly_the_settings() -> None:
    assert list(load_schema("release-config")["properties"]) == list(SETTINGS)


@pytest.mark.parametrize("command", ["release", "publish"])
def test_the_cli_flags_are_the_settings_and_the_run_options(command: str) -> None:
    expected = {s.flag for s in SETTINGS.values() if s.flag and not (command == "publish" and s.build_only)}
    expected |= {o.flag for o in RUN_OPTIONS if command == "release" or not o.release_only}
    assert flags_of(command) == expected


def test_make_help_shows_every_setting_with_its_default() -> None:
    shown = make_help()
    expected = {s.make for s in SETTINGS.values() if s.make} | {o.make for o in RUN_OPTIONS if o.make}
    assert set(shown) == expected
    defaults = ReleaseConfig()
    for name, s in SETTINGS.items():
        if s.make is None:
            continue
        default = getattr(defaults, name)
        want = s.make_default.replace("$(VERSION)", "") if s.make_default is not None else (
            "" if default in (None, []) else str(default))
        assert shown[s.make] == want, f"make's {s.make} default {shown[s.make]!r} is not {name}'s {want!r}"


def test_make_passes_each_setting_on_as_its_flag(tmp_path: Path) -> None:
    (tmp_path / "assets").mkdir()
    values = {"version": "2024_02_01", "assets_dir": str(tmp_path / "assets"),
              "features_dir": str(tmp_path / "assets"), "holodeck_dir": str(tmp_path / "assets"),
              "release_dir": str(tmp_path / "release"),
              "bucket": "some-bucket", "prefix": "some/prefix", "endpoint_url": "http://127.0.0.1:9",
              "profile": "someone", "chunk_size": "8M", "upload_concurrency": "3", "transfers": "2",
              "public_base_url": "https://pub.example", "shard_size": "2G", "executor": "ray",
              "ray_address": "127.0.0.1:6379"}
    assert set(values) == {n for n, s in SETTINGS.items() if s.flag and s.make}
    assigned = [f"{SETTINGS[n].make}={v}" for n, v in values.items()]
    done = subprocess.run(["make", "--no-print-directory", "-n", "-C", str(REPO), "release-settings", *assigned],
                          capture_output=True, text=True, env=make_env())
    assert done.returncode == 0, done.stderr
    for name, value in values.items():
        assert f"{SETTINGS[name].flag} '{value}'" in done.stdout, f"{SETTINGS[name].make} is not passed on"
    # the ones without a release flag reach the tar and the publish step another way
    tar = subprocess.run(["make", "--no-print-directory", "-n", "-C", str(REPO), "tar", *assigned,
                          "EXCLUDES=*.tmp", "SOURCE_DATE_EPOCH=5"], capture_output=True, text=True, env=make_env())
    assert tar.returncode == 0, tar.stderr
    assert "--exclude '*.tmp' --source-date-epoch 5" in tar.stdout
    assert re.search(r"^export R2_ACCOUNT_ID$", (REPO / "Makefile").read_text(), re.M)


def test_the_invoke_release_task_has_the_flags() -> None:
    spec = importlib.util.spec_from_file_location("release_tasks", REPO / "tasks.py")
    assert spec and spec.loader
    tasks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tasks)
    params = list(inspect.signature(tasks.release.body).parameters)[1:]  # after the Context
    expected = {n for n, s in SETTINGS.items() if s.flag} | {o.name for o in RUN_OPTIONS if o.invoke}
    assert set(params) == expected
    assert tasks.release.help == {**{n: s.help for n, s in SETTINGS.items() if s.flag},
                                  **{o.name: o.help for o in RUN_OPTIONS if o.invoke}}


def test_a_config_becomes_make_assignments_under_each_settings_variable(tmp_path: Path) -> None:
    every = {"version": "2024_02_01", "assets_dir": "/a", "features_dir": "/f", "holodeck_dir": "/h",
             "release_dir": "/r",
             "bucket": "some-bucket", "prefix": "p", "endpoint_url": "http://127.0.0.1:9",
             "r2_account_id": "0" * 32, "profile": "someone", "chunk_size": "8M", "upload_concurrency": 3,
             "transfers": 2, "source_date_epoch": 5, "excludes": ["*.tmp", "*.bak"],
             "public_base_url": "https://pub.example", "shard_size": "2G", "executor": "ray",
             "ray_address": "127.0.0.1:6379"}
    assert list(every) == list(SETTINGS)
    config = tmp_path / "release.toml"
    config.write_text("[release]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in every.items()))
    done = run_cli("config", "--config", str(config), "--make")
    assert done.returncode == 0, done.stderr
    lines = [ln for ln in done.stdout.splitlines() if not ln.startswith("#")]
    expected = [f"{SETTINGS[k].make} ?= {' '.join(v) if isinstance(v, list) else v}" for k, v in every.items()]
    assert lines == expected


def test_every_environment_variable_is_in_the_help() -> None:
    for name, s in SETTINGS.items():
        if s.env:
            assert re.search(rf"\b{s.env}\b", ENVIRONMENT_HELP), f"{name}: ${s.env} is not in --help"


def test_settings_read_from_the_environment_by_the_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    for s in SETTINGS.values():
        if s.env in ("VERSION", "ASSETS_DIR", "FEATURES_DIR", "RELEASE_DIR", "BUCKET"):
            monkeypatch.setenv(s.env, f"from-env-{s.env}")
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    release = sub.choices["release"]
    for s in SETTINGS.values():
        if s.env in ("VERSION", "ASSETS_DIR", "FEATURES_DIR", "RELEASE_DIR", "BUCKET"):
            (action,) = [a for a in release._actions if s.flag in a.option_strings]
            assert action.default == f"from-env-{s.env}"


def test_the_schema_bounds_the_epoch_as_the_resolver_does(tmp_path: Path) -> None:
    from objathor_release.build.epoch import LIMIT

    assert load_schema("release-config")["properties"]["source_date_epoch"]["maximum"] == LIMIT - 1
    config = tmp_path / "release.toml"
    config.write_text(f"source_date_epoch = {LIMIT}\n")
    done = run_cli("config", "--config", str(config))
    assert done.returncode == 2
    assert done.stderr == (f"objathor-release: error: {config}: $.source_date_epoch: {LIMIT} is greater than "
                           f"the maximum of {LIMIT - 1}: fix this setting\n")
