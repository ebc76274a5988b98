"""Hostile input against the sharded-release code: shard entries, shard lists, --slice, the streaming
manifest reader of ``download assets --uids``.

Each test here either caught a real hole (and now guards its fix) or pins a check that would let a
hostile input through if it were removed. The streaming reader must never mean something other than
the full parse of the same bytes: a pinned or signed manifest is trusted for its bytes, so two
readings of them would let one publisher's file say two things.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from objathor_release.build.manifest import MANIFEST_FORMAT, render_manifest
from objathor_release.errors import InputError
from objathor_release.fetch.origin import check_manifest, check_manifest_for_uids
from tests.conftest import run_cli

V = "2024_02_01"
URL = "http://example.invalid/2024_02_01/manifest.json"
QUIET = {"OBJATHOR_PROGRESS": "0", "OBJATHOR_DOWNLOAD_BACKOFF": "0.01"}


def uid(a: int) -> str:
    return f"{a:032x}"


def member(a: int, f: int, offset: int) -> dict[str, Any]:
    return {"path": f"assets/{uid(a)}/file{f}.bin", "offset": offset, "size": 100, "sha256": f"{a * 10 + f:064x}"}


def manifest(n_assets: int = 6) -> dict[str, Any]:
    members = [member(a, f, 512 + 1024 * (a * 2 + f)) for a in range(n_assets) for f in range(2)]
    return {"manifest_format": MANIFEST_FORMAT, "version": V, "tool_version": "0.1.0", "excludes": [],
            "artifacts": [
                {"name": "annotations.json.gz", "size": 10, "sha256": "a" * 64, "members": []},
                {"name": "assets.tar", "size": 512 + 1024 * 2 * n_assets + 1024, "sha256": "b" * 64,
                 "members": members}]}


def wanted_members(m: dict[str, Any], u: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """Per artifact, in order: the members of asset ``u``, as the download's index would see them."""
    out = []
    for a in m["artifacts"]:
        mine = [x for x in a["members"] if [p for p in x["path"].split("/") if p not in ("", ".")][1:2] == [u]]
        out.append((a["name"], mine))
    return out


def both(data: bytes, u: str) -> tuple[Any, Any]:
    """(full parse, streaming reading) of ``data`` for asset ``u``: the members, or the error's class."""
    def run(fn: Any) -> Any:
        try:
            return wanted_members(fn(), u)
        except InputError:
            return InputError
    return run(lambda: check_manifest(data, URL, V)), run(lambda: check_manifest_for_uids(data, URL, V, {u}))


def text_lines() -> list[str]:
    return render_manifest(manifest()).splitlines(keepends=True)


def member_line_index(lines: list[str], a: int, f: int) -> int:
    return next(i for i, ln in enumerate(lines) if f'"assets/{uid(a)}/file{f}.bin"' in ln)


# ---------------------------------------------------------------------- the streaming manifest reader


def _dup_path_key(lines: list[str]) -> None:
    """A member line with two "path" keys: JSON keeps the last (asset 2's), the first is asset 1's."""
    i = member_line_index(lines, 1, 0)
    lines[i] = lines[i].replace(f'"path": "assets/{uid(1)}/file0.bin"',
                                f'"path": "assets/{uid(1)}/file0.bin", "path": "assets/{uid(2)}/extra.bin"')


def _escaped_key_first(lines: list[str]) -> None:
    """An extra key whose escaped name ends in path": its text holds `"path": "` before the real path."""
    i = member_line_index(lines, 1, 0)
    lines[i] = lines[i].replace('{"offset"', '{"a\\"path": "assets/' + uid(1) + '/decoy", "offset"')
    lines[i] = lines[i].replace(f"assets/{uid(1)}/file0.bin", f"assets/{uid(2)}/extra.bin")


def _two_members_one_line(lines: list[str]) -> None:
    """Two members on one line: the first is another asset's, the second asset 2's."""
    i = member_line_index(lines, 1, 0)
    extra = json.dumps(member(2, 9, 512 + 1024 * 40))
    lines[i] = lines[i].rstrip("\n").rstrip(",") + ", " + extra + ",\n"


def _second_artifacts_list(lines: list[str]) -> None:
    """A top-level "artifacts" key after the list: JSON keeps the last, an empty list."""
    end = max(i for i, ln in enumerate(lines) if ln.rstrip(",\n") == "  ]")
    lines[end] = "  ],\n"
    lines.insert(end + 1, '  "artifacts": [],\n')
    # the key after it must still end without a comma
    last = max(i for i, ln in enumerate(lines) if ln.startswith('  "') and i > end + 1)
    lines[last] = lines[last].rstrip("\n").rstrip(",") + "\n"


def _members_then_empty(lines: list[str]) -> None:
    """assets.tar's "members" list, then a second "members": [] in the same artifact (JSON keeps [])."""
    i = max(i for i, ln in enumerate(lines) if ln.rstrip(",\n") == "      ]")
    lines[i] = "      ],\n"
    lines.insert(i + 1, '      "members": [],\n')
    # the artifact field that followed ("name", "sha256", "size") keeps its own comma; the last one
    j = max(k for k in range(i + 2, len(lines)) if lines[k].startswith('      "') and
            all(not lines[x].startswith("    }") for x in range(i + 2, k)))
    lines[j] = lines[j].rstrip("\n").rstrip(",") + "\n"


def _duplicate_artifact(lines: list[str]) -> None:
    """assets.tar listed twice: the first copy without asset 2, the second with it."""
    start = next(i for i, ln in enumerate(lines) if ln.rstrip("\n") == "    {" and
                 '"assets.tar"' in "".join(lines[i:]).split("    }")[0])
    end = next(i for i in range(start, len(lines)) if lines[i].rstrip(",\n") == "    }")
    block = lines[start:end + 1]
    first = [ln for ln in block if f"assets/{uid(2)}/" not in ln]
    first[-1] = "    },\n"
    lines[start:start] = first


READER_HOLES = {
    "a member line with two path keys": _dup_path_key,
    "an escaped key holding the path key's text": _escaped_key_first,
    "two members on one line": _two_members_one_line,
    "a second artifacts list": _second_artifacts_list,
    "a second members list": _members_then_empty,
    "an artifact listed twice": _duplicate_artifact,
}


@pytest.mark.parametrize("case", sorted(READER_HOLES))
def test_the_streaming_reader_never_reads_other_members_than_the_full_parse(case: str) -> None:
    lines = text_lines()
    READER_HOLES[case](lines)
    data = "".join(lines).encode()
    json.loads(data)  # still JSON: the crafted text is a manifest the full parse reads
    full, slim = both(data, uid(2))
    assert slim == full, f"{case}: the full parse reads {full}, the streaming reader {slim}"


def test_an_artifact_listed_twice_is_refused_by_either_reading() -> None:
    """Which copy a part takes would depend on the code path (the first for a part, the last for the
    shard list and the streaming reader): refused outright, in one line."""
    lines = text_lines()
    _duplicate_artifact(lines)
    data = "".join(lines).encode()
    for read in (lambda: check_manifest(data, URL, V), lambda: check_manifest_for_uids(data, URL, V, {uid(2)})):
        with pytest.raises(InputError, match="lists .assets.tar. twice") as err:
            read()
        assert "\n" not in str(err.value)


def _name_first(lines: list[str]) -> list[str]:
    """Each artifact's "name" line moved to be its first field (its comma fixed)."""
    out = list(lines)
    for i, ln in enumerate(lines):
        if ln.startswith('      "name": '):
            start = max(k for k in range(i) if out[k].rstrip("\n") == "    {")
            name = out.pop(i).rstrip("\n").rstrip(",")
            out.insert(start + 1, name + ",\n")
            last = next(k for k in range(i, len(out)) if out[k].startswith("    }")) - 1
            out[last] = out[last].rstrip("\n").rstrip(",") + "\n"
    return out


FINE = {
    # CRLF line ends: not the layout, so the full parse (the same answer)
    "crlf": lambda lines: [ln.replace("\n", "\r\n") for ln in lines],
    # a path with JSON escapes for asset 2: the slow path decodes it, as the full parse does
    "escaped path": lambda lines: [ln.replace(f'"assets/{uid(2)}/file1.bin"',
                                              '"assets\\/' + uid(2)[:-1] + '\\u00' + uid(2)[-1].encode().hex()
                                              + '/file1.bin"') for ln in lines],
    # a member of asset 2 inside another artifact: both keep it in that artifact
    "member in another artifact": lambda lines: [
        ln.replace('"members": []', '"members": [' + json.dumps(member(2, 7, 512)) + "]")
        if '"members": []' in ln else ln for ln in lines],
    # a member's keys in another order (path first, size before sha256): found wherever "path" is
    "member keys reordered": lambda lines: [
        json.dumps(dict(sorted(json.loads(ln.strip().rstrip(",")).items(), key=lambda kv: kv[0] != "path")))
        .join(["        ", ",\n" if ln.rstrip("\n").endswith(",") else "\n"])
        if ln.startswith("        {") else ln for ln in lines],
    # an artifact's fields in another order (name first, members last): the same artifact
    "artifact keys reordered": lambda lines: _name_first(lines),
    # one line of 5 MB (an unknown top-level field): read as one line, the same answer
    "a huge line": lambda lines: [lines[0], '  "aaa": "' + "x" * 5_000_000 + '",\n', *lines[1:]],
}


@pytest.mark.parametrize("case", sorted(FINE))
def test_layouts_the_streaming_reader_reads_as_the_full_parse(case: str) -> None:
    lines = FINE[case](text_lines())
    data = "".join(lines).encode()
    full, slim = both(data, uid(2))
    assert full is not InputError or case == "member in another artifact"
    assert slim == full


# ---------------------------------------------------------------------- --slice


@pytest.mark.parametrize("bad", ["1/" + "9" * 5000, "9" * 5000 + "/1", "0/" + "0" * 5000])
def test_a_slice_of_huge_numbers_is_one_usage_line(tmp_path: Path, bad: str) -> None:
    proc = run_cli("download", "assets", "--version", V, "--path", str(tmp_path), "--base-url",
                   "http://127.0.0.1:9/none", f"--slice={bad}", env=QUIET)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-500:]
    assert len(proc.stderr.strip().splitlines()) == 1 and "--slice" in proc.stderr, proc.stderr[-500:]
    assert not (tmp_path / V).exists()


# ---------------------------------------------------------------------- shard jobs and their entries

# the shard jobs as tests/test_distributed.py runs them (its version, tree and one-line check)
from tests.test_distributed import V as JOB_V  # noqa: E402
from tests.test_distributed import job, one_line_error  # noqa: E402
from tests.test_distributed import plan_count as shard_count  # noqa: E402


def entry_of(s3_client: Any, bucket: str, k: int) -> dict[str, Any]:
    body = s3_client.get_object(Bucket=bucket, Key=f"{JOB_V}/.shards/assets-{k:05d}.tar.json")["Body"].read()
    doc: dict[str, Any] = json.loads(body)
    return doc


def run_every_shard_job(tree_src: Path, tmp_path: Path, bucket: str, s3_env: dict[str, str]) -> None:
    for k in range(shard_count(tree_src)):
        assert job(tree_src, tmp_path / f"j{k}", bucket, s3_env, "--only-shard", str(k)).returncode == 0


def finish_after_forging_entry_0(tree_src: Path, tmp_path: Path, bucket: str, s3_env: dict[str, str],
                                 s3_client: Any, forge: Any) -> str:
    """Every shard job run, shard 0's entry rewritten by ``forge``, then the finish: its one error
    line (and nothing published)."""
    run_every_shard_job(tree_src, tmp_path, bucket, s3_env)
    doc = entry_of(s3_client, bucket, 0)
    forge(doc)
    s3_client.put_object(Bucket=bucket, Key=f"{JOB_V}/.shards/assets-00000.tar.json", Body=json.dumps(doc))
    line = one_line_error(job(tree_src, tmp_path / "finish", bucket, s3_env, "--finish"))
    listed = {o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])}
    assert f"{JOB_V}/manifest.json" not in listed, "nothing published"
    return line


def test_a_shard_resumed_from_its_kept_tar_after_the_version_is_published(
        tree_src: Path, tmp_path: Path, bucket: str, s3_env: dict[str, str], s3_client: Any) -> None:
    """The version is published; shard 0's job is run again, its entry write fails (the tar and its
    plan stamp are kept to resume), then it runs once more: it resumes from the kept tar, which the
    published-version check must read as the tar's own sha256 (it read the fresh build's, unset here)."""
    from tests.support.faultproxy import PASS, FaultProxy, Request, status

    run_every_shard_job(tree_src, tmp_path, bucket, s3_env)
    assert job(tree_src, tmp_path / "finish", bucket, s3_env, "--finish").returncode == 0
    s3_client.delete_object(Bucket=bucket, Key=f"{JOB_V}/.shards/assets-00000.tar.json")

    def no_entry(req: Request) -> Any:
        return status(403) if req.method == "PUT" and "/.shards/" in req.path else PASS

    with FaultProxy(s3_env["AWS_ENDPOINT_URL"], no_entry) as proxy:
        failed = job(tree_src, tmp_path / "again", bucket, {**s3_env, "AWS_ENDPOINT_URL": proxy.url},
                     "--only-shard", "0")
    assert ".shards/assets-00000.tar.json" in one_line_error(failed)
    work = tmp_path / "again" / ".shard-work" / "assets-00000"
    assert (work / "assets-00000.tar").is_file() and (work / "shard.plan").is_file(), "kept to resume"

    again = job(tree_src, tmp_path / "again", bucket, s3_env, "--only-shard", "0")
    assert again.returncode == 0 and "Traceback" not in again.stderr, again.stderr[-2000:]
    assert "shard 0 assets-00000.tar" in again.stdout
    assert entry_of(s3_client, bucket, 0)["artifact"]["name"] == "assets-00000.tar"


def _dup_path(art: dict[str, Any]) -> None:
    """A member's path replaced by another's of the same asset folder: the count of files unchanged."""
    assert len(art["members"]) >= 2
    art["members"][1]["path"] = art["members"][0]["path"]


def _other_size(art: dict[str, Any]) -> None:
    """One member's size changed, the shard's size and count of files unchanged."""
    art["members"][0]["size"] += 1


@pytest.mark.parametrize("forge", [_dup_path, _other_size], ids=["a path listed twice", "a member's size"])
def test_an_entry_whose_members_are_not_its_shards_files_is_refused(
        tree_src: Path, tmp_path: Path, bucket: str, s3_env: dict[str, str], s3_client: Any, forge: Any) -> None:
    line = finish_after_forging_entry_0(tree_src, tmp_path, bucket, s3_env, s3_client,
                                        lambda doc: forge(doc["artifact"]))
    assert "assets-00000.tar" in line and "--only-shard 0" in line, line


# ---------------------------------------------------------------------- a sharded download


def _coherent(rel: Any, name: str) -> None:
    """The manifest's entry for shard ``name`` made to match the tar now served (size and sha256), its
    members left as they were: the whole-stream check passes, only the member checks remain."""
    import hashlib

    from tests.test_download_shards import publish_manifest

    data = (rel.vdir / name).read_bytes()
    m = json.loads((rel.vdir / "manifest.json").read_text())
    art = next(a for a in m["artifacts"] if a["name"] == name)
    art["size"], art["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    publish_manifest(rel.vdir, m)


def _symlink_in_shard(rel: Any) -> None:
    from tests.test_download_shards import shard_tar

    (rel.src / rel.shard_uids[1][0] / "zz-link").symlink_to("/etc/passwd")
    shard_tar(rel.src, rel.shard_uids[1], rel.vdir / rel.names[1])
    _coherent(rel, rel.names[1])


def _folder_not_in_entry(rel: Any) -> None:
    from tests.test_download_shards import shard_tar

    shard_tar(rel.src, [*rel.shard_uids[1], rel.shard_uids[2][0]], rel.vdir / rel.names[1])
    _coherent(rel, rel.names[1])


def _other_content(rel: Any) -> None:
    (rel.vdir / rel.names[1]).write_bytes((rel.vdir / rel.names[2]).read_bytes())  # not re-described


SHARD_TARS = {"a symlink in a shard": _symlink_in_shard,
              "an asset folder not in the shard's entry": _folder_not_in_entry,
              "a shard whose bytes are another's": _other_content}


@pytest.mark.parametrize("case", sorted(SHARD_TARS))
def test_a_shard_tar_unlike_its_entry_is_refused_and_lands_nothing(web: Any, tmp_path: Path, case: str) -> None:
    from devtools.served_release import tree
    from objathor_release.errors import ReleaseError
    from objathor_release.fetch.download import download_version
    from tests.test_download_shards import ONE, Sharded
    from tests.test_download_shards import V as SV

    rel = Sharded(web, tmp_path, assets=6, per_shard=2)
    SHARD_TARS[case](rel)
    dest = tmp_path / "dl"
    with pytest.raises(ReleaseError) as err:
        download_version("assets", SV, path=dest, base_url=rel.base, show_progress=False, http_config=ONE)
    assert rel.names[1] in str(err.value) and "\n" not in str(err.value), str(err.value)
    assets = dest / SV / "assets"
    assert not [p for p in dest.rglob("*") if p.is_symlink()], "no link written"
    landed = {p.name for p in assets.iterdir()} if assets.exists() else set()
    assert not landed & set(rel.shard_uids[1]), f"{case}: shard 1's folders landed: {landed}"
    # the shards that did land (0, and 2 when the pool had taken it up) are whole and verified
    if landed:
        assert tree(assets) == rel.expected(sorted(landed))
    assert not list((dest / SV / ".objathor-release").glob("shard-assets-00001.*")), "no staging, no marker"
    proc = run_cli("download", "assets", "--version", SV, "--path", str(tmp_path / "cli"), "--base-url",
                   rel.base, "--connections", "1", env=QUIET)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("objathor-release: error:")]
    assert len(errors) == 1 and rel.names[1] in errors[0], proc.stderr  # (the retry's note comes first)


@pytest.mark.parametrize("alias", ["assets/./{u}/stolen.bin", "assets//{u}/stolen.bin", "./assets/{u}/stolen.bin"])
def test_two_shards_claiming_one_folder_by_another_spelling_are_refused(alias: str) -> None:
    from objathor_release.fetch.shards import shard_plan

    def shard(name: str, paths: list[str]) -> dict[str, Any]:
        return {"name": name, "size": 4096, "sha256": "c" * 64,
                "members": [{"path": p, "offset": 512 * (i + 1), "size": 1, "sha256": "d" * 64}
                            for i, p in enumerate(paths)]}
    m = {"shards": {"assets.tar": ["assets-00000.tar", "assets-00001.tar"]},
         "artifacts": [shard("assets-00000.tar", [f"assets/{uid(1)}/a.bin"]),
                       shard("assets-00001.tar", [f"assets/{uid(2)}/b.bin", alias.format(u=uid(1))])]}
    with pytest.raises(InputError, match="is in two shards"):
        shard_plan(m, URL)


def _format_true(doc: dict[str, Any]) -> None:
    doc["entry_format"] = True  # == 1 in Python, not the number 1


def _extra_field(doc: dict[str, Any]) -> None:
    doc["artifact"]["url"] = "http://elsewhere.invalid/assets-00000.tar"  # would be published as is


@pytest.mark.parametrize("forge", [_format_true, _extra_field], ids=["entry_format true", "an extra field"])
def test_an_entry_not_as_a_shard_job_writes_it_is_refused(
        tree_src: Path, tmp_path: Path, bucket: str, s3_env: dict[str, str], s3_client: Any, forge: Any) -> None:
    line = finish_after_forging_entry_0(tree_src, tmp_path, bucket, s3_env, s3_client, forge)
    assert f"s3://{bucket}/{JOB_V}/.shards/assets-00000.tar.json" in line, line
