"""The part layout (S3's multipart limits), the ETag math and the part reader: no server needed."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from objathor_release.errors import InputError, UsageError
from objathor_release.publish import parts
from objathor_release.publish.localfiles import ReleaseDir
from objathor_release.settings import MAX_OBJECT_SIZE, MAX_PART_SIZE, MAX_PARTS, MIN_PART_SIZE, UploadConfig
from tests.support.fixtures_upload import PART, expected_etag, random_bytes

MiB = 1024 * 1024
GiB = 1024 * MiB
TiB = 1024 * GiB


def job_of(size: int, config: UploadConfig) -> parts.Job:
    layout = parts.layout_for(size, config)
    assert layout.parts == (math.ceil(size / layout.part_size) if layout.multipart else 1)
    return parts.Job("f.bin", Path("f.bin"), "v/f.bin", size, "0" * 64, layout.part_size, layout.multipart, 0)


def shape(size: int, config: UploadConfig) -> tuple[bool, int]:
    layout = parts.layout_for(size, config)
    return layout.multipart, layout.part_size


def part_size(size: int, config: UploadConfig) -> int:
    return parts.layout_for(size, config).part_size


def ranges(job: parts.Job) -> list[tuple[int, int]]:
    return [job.part_range(n) for n in range(1, job.parts + 1)]


# --------------------------------------------------------------------------- the layout and its limits


def test_below_the_threshold_is_one_put_of_the_whole_file() -> None:
    config = UploadConfig(chunk_size=8 * MiB, multipart_threshold=16 * MiB)
    assert shape(16 * MiB - 1, config) == (False, 16 * MiB - 1)
    assert shape(0, config) == (False, 1)  # an empty file is one empty PUT
    assert shape(16 * MiB, config) == (True, 8 * MiB)
    job = job_of(16 * MiB - 1, config)
    assert (job.parts, ranges(job)) == (1, [(0, 16 * MiB - 1)])
    assert parts.layout_for(16 * MiB - 1, config).why == "under the 16.0 MiB multipart threshold: one PUT"
    # a given --chunk-size is also the threshold: a file smaller than one part is one PUT
    assert shape(8 * MiB - 1, UploadConfig(chunk_size=8 * MiB)) == (False, 8 * MiB - 1)
    assert shape(8 * MiB, UploadConfig(chunk_size=8 * MiB)) == (True, 8 * MiB)


def test_the_minimum_part_is_5_mib() -> None:
    from objathor_release.settings import adjust_part_size

    assert adjust_part_size(100 * MiB, 1 * MiB) == MIN_PART_SIZE
    assert adjust_part_size(100 * MiB, MIN_PART_SIZE - 1) == MIN_PART_SIZE
    with pytest.raises(UsageError, match="5 MiB to 5 GiB"):
        UploadConfig(chunk_size=MIN_PART_SIZE - 1)
    assert part_size(100 * MiB, UploadConfig(chunk_size=MIN_PART_SIZE)) == MIN_PART_SIZE


def test_the_part_size_grows_to_stay_within_10000_parts() -> None:
    config = UploadConfig(chunk_size=5 * MiB)
    exactly = 10_000 * 5 * MiB
    assert part_size(exactly, config) == 5 * MiB  # 10,000 parts fit: no growth
    assert part_size(exactly + 1, config) == 6 * MiB  # one byte more: the next whole MiB
    assert parts.layout_for(exactly + 1, config).why == ("--chunk-size 5.0 MiB would need more than 10,000 "
                                                         "parts: 6.0 MiB")
    big = 60 * GiB  # 12,288 parts of 5 MiB
    job = job_of(big, config)
    assert (job.part_size, job.parts) == (7 * MiB, 8778)
    assert job.parts <= MAX_PARTS and job.part_size % MiB == 0


def test_the_largest_object_fits_and_a_larger_one_is_refused() -> None:
    config = UploadConfig(chunk_size=5 * MiB)
    size = part_size(MAX_OBJECT_SIZE, config)
    assert size == 525 * MiB and math.ceil(MAX_OBJECT_SIZE / size) <= MAX_PARTS
    assert part_size(MAX_OBJECT_SIZE, UploadConfig(chunk_size=MAX_PART_SIZE)) == MAX_PART_SIZE
    for each in (config, UploadConfig()):
        with pytest.raises(UsageError, match="larger than the 5 TiB S3 object limit"):
            parts.layout_for(MAX_OBJECT_SIZE + 1, each)


def test_the_maximum_part_is_5_gib() -> None:
    from objathor_release.settings import adjust_part_size

    assert adjust_part_size(10 * GiB, 6 * GiB) == MAX_PART_SIZE
    with pytest.raises(UsageError, match="5 MiB to 5 GiB"):
        UploadConfig(chunk_size=MAX_PART_SIZE + 1)


@settings(max_examples=300, deadline=None)
@given(size=st.integers(min_value=1, max_value=MAX_OBJECT_SIZE),
       chunk=st.none() | st.integers(min_value=MIN_PART_SIZE, max_value=MAX_PART_SIZE),
       concurrency=st.none() | st.integers(min_value=1, max_value=1000))
def test_every_layout_keeps_the_s3_limits(size: int, chunk: int | None, concurrency: int | None) -> None:
    config = UploadConfig(chunk_size=chunk, upload_concurrency=concurrency, multipart_threshold=MIN_PART_SIZE)
    job = job_of(size, config)
    if not job.multipart:
        assert size < MIN_PART_SIZE and job.parts == 1
        return
    got = ranges(job)
    assert MIN_PART_SIZE <= job.part_size <= MAX_PART_SIZE
    if chunk is not None:
        assert job.part_size >= chunk or job.part_size == MIN_PART_SIZE
    else:  # chosen: whole MiB, enough parts for every connection unless the 5 MiB floor stops it
        assert job.part_size % MiB == 0
        assert job.parts >= min(4 * config.per_file, size // MIN_PART_SIZE)
    assert 1 <= job.parts <= MAX_PARTS
    assert all(length == job.part_size for _, length in got[:-1])  # all but the last are equal
    assert 0 < got[-1][1] <= job.part_size
    assert [off for off, _ in got] == [i * job.part_size for i in range(job.parts)]  # contiguous
    assert sum(length for _, length in got) == size


# --------------------------------------------------------------------------- the layout chosen per file


def test_auto_a_small_file_is_one_put_and_from_8_mib_it_has_parts_of_the_5_mib_minimum() -> None:
    auto = UploadConfig()
    assert shape(8 * MiB - 1, auto) == (False, 8 * MiB - 1)
    assert parts.layout_for(8 * MiB - 1, auto).why == "under the 8.0 MiB multipart threshold: one PUT"
    small = parts.layout_for(38 * MiB, auto)  # the file that was one 64 MiB part, one connection
    assert (small.multipart, small.part_size, small.parts) == (True, 5 * MiB, 8)
    assert small.why == ("auto: 8 parts of the 5 MiB minimum (too small a file to give each of 64 connections "
                         "4)")


def test_auto_a_medium_file_gives_every_connection_four_parts() -> None:
    medium = parts.layout_for(2 * GiB, UploadConfig())
    assert (medium.part_size, medium.parts) == (8 * MiB, 256)  # 64 connections x 4
    assert medium.why == "auto: 256 parts so that each of 64 connections has at least 4"
    fixed = parts.layout_for(2 * GiB, UploadConfig(upload_concurrency=4))  # 4 connections for this file
    assert (fixed.part_size, fixed.parts) == (128 * MiB // 2, 32)  # 64 MiB: the auto cap
    assert fixed.why == "auto: 32 parts so that each of 4 connections has at least 4"


def test_auto_a_huge_file_stays_within_10000_parts() -> None:
    huge = parts.layout_for(300 * GiB, UploadConfig())
    assert (huge.part_size, huge.parts) == (64 * MiB, 4800)  # the auto cap: a retry resends at most 64 MiB
    biggest = parts.layout_for(MAX_OBJECT_SIZE, UploadConfig())
    assert (biggest.part_size, biggest.parts) == (525 * MiB, 9987)
    assert biggest.why == "auto: 9987 parts, the smallest whole MiB that stays within 10,000 parts"
    job = job_of(MAX_OBJECT_SIZE, UploadConfig())
    lengths = {length for _, length in ranges(job)[:-1]}
    assert lengths == {525 * MiB}


def test_a_given_chunk_size_wins_over_the_auto_choice() -> None:
    for size in (64 * MiB, 2 * GiB, 300 * GiB):
        layout = parts.layout_for(size, UploadConfig(chunk_size=64 * MiB))
        assert layout.part_size == 64 * MiB and layout.why == "--chunk-size 64.0 MiB"
    assert shape(38 * MiB, UploadConfig(chunk_size=64 * MiB)) == (False, 38 * MiB)  # under one part: a PUT


# --------------------------------------------------------------------------- ETags and the part reader


def test_multipart_etag_is_md5_of_the_part_md5s() -> None:
    a, b = b"a" * 10, b"b" * 3
    md5s = [hashlib.md5(a).digest(), hashlib.md5(b).digest()]
    assert parts.multipart_etag(md5s) == hashlib.md5(md5s[0] + md5s[1]).hexdigest() + "-2"
    assert parts.multipart_etag(md5s[:1]).endswith("-1")


def test_multipart_etag_and_part_reader(tmp_path: Path) -> None:
    data = random_bytes(2 * PART + 777, seed=5)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert parts.local_etag(path, len(data), PART, multipart=True) == expected_etag(data)
    assert parts.local_etag(path, len(data), len(data), multipart=False) == hashlib.md5(data).hexdigest()
    etag, sha = parts.local_digests(path, len(data), PART, multipart=True)
    assert (etag, sha) == (expected_etag(data), hashlib.sha256(data).hexdigest())
    with open(path, "rb", buffering=0) as fh:
        reader = parts.PartReader(fh, PART, PART, "f.bin")
        assert reader.md5() == hashlib.md5(data[PART:2 * PART]).digest()
        assert len(reader) == PART and reader.tell() == 0
        head = reader.read(1000)
        assert head == data[PART:PART + 1000]
        reader.seek(0)  # what botocore does to retry a request
        assert reader.read() == data[PART:2 * PART]
        assert reader.read(10) == b""
        assert not hasattr(reader, "fileno")  # botocore must not fstat the whole file


def test_sequential_sha256_is_the_files_digest_and_a_shorter_file_is_an_input_error(tmp_path: Path) -> None:
    import threading

    data = random_bytes(3 * 1000 + 17, seed=9)
    (tmp_path / "f.bin").write_bytes(data)
    with ReleaseDir(tmp_path) as rd:
        file = rd.open("f.bin")
        assert file is not None
        sha = parts.SequentialSha256("f.bin")
        abort = threading.Event()
        readers = [parts.PartReader(file, off, min(1000, len(data) - off), "f.bin")
                   for off in range(0, len(data), 1000)]

        def hash_part(n: int) -> None:
            with sha.turn(n, abort):
                readers[n - 1].md5(sha.update)

        threads = [threading.Thread(target=hash_part, args=(n,)) for n in range(len(readers), 0, -1)]
        for t in threads:  # started last part first: each still waits for its turn
            t.start()
        for t in threads:
            t.join(10)
        assert sha.hexdigest() == hashlib.sha256(data).hexdigest() and sha.bytes == len(data)
        past_the_end = parts.PartReader(file, len(data) - 10, 20, "f.bin")
        with pytest.raises(InputError, match="got shorter while uploading"):
            past_the_end.md5()
        file.close()
