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
    multipart, part_size = parts.layout_for(size, config)
    return parts.Job("f.bin", Path("f.bin"), "v/f.bin", size, "0" * 64, part_size, multipart, 0)


def ranges(job: parts.Job) -> list[tuple[int, int]]:
    return [job.part_range(n) for n in range(1, job.parts + 1)]


# --------------------------------------------------------------------------- the layout and its limits


def test_below_the_threshold_is_one_put_of_the_whole_file() -> None:
    config = UploadConfig(chunk_size=8 * MiB, multipart_threshold=16 * MiB)
    assert parts.layout_for(16 * MiB - 1, config) == (False, 16 * MiB - 1)
    assert parts.layout_for(0, config) == (False, 1)  # an empty file is one empty PUT
    assert parts.layout_for(16 * MiB, config) == (True, 8 * MiB)
    job = job_of(16 * MiB - 1, config)
    assert (job.parts, ranges(job)) == (1, [(0, 16 * MiB - 1)])


def test_the_minimum_part_is_5_mib() -> None:
    from objathor_release.settings import adjust_part_size

    assert adjust_part_size(100 * MiB, 1 * MiB) == MIN_PART_SIZE
    assert adjust_part_size(100 * MiB, MIN_PART_SIZE - 1) == MIN_PART_SIZE
    with pytest.raises(UsageError, match="5 MiB to 5 GiB"):
        UploadConfig(chunk_size=MIN_PART_SIZE - 1)
    assert UploadConfig(chunk_size=MIN_PART_SIZE).part_size_for(100 * MiB) == MIN_PART_SIZE


def test_the_part_size_grows_to_stay_within_10000_parts() -> None:
    config = UploadConfig(chunk_size=5 * MiB)
    exactly = 10_000 * 5 * MiB
    assert config.part_size_for(exactly) == 5 * MiB  # 10,000 parts fit: no growth
    assert config.part_size_for(exactly + 1) == 6 * MiB  # one byte more: the next whole MiB
    big = 60 * GiB  # 12,288 parts of 5 MiB
    job = job_of(big, config)
    assert (job.part_size, job.parts) == (7 * MiB, 8778)
    assert job.parts <= MAX_PARTS and job.part_size % MiB == 0


def test_the_largest_object_fits_and_a_larger_one_is_refused() -> None:
    config = UploadConfig(chunk_size=5 * MiB)
    size = config.part_size_for(MAX_OBJECT_SIZE)
    assert size == 525 * MiB and math.ceil(MAX_OBJECT_SIZE / size) <= MAX_PARTS
    assert UploadConfig(chunk_size=MAX_PART_SIZE).part_size_for(MAX_OBJECT_SIZE) == MAX_PART_SIZE
    with pytest.raises(UsageError, match="larger than the 5 TiB S3 object limit"):
        config.part_size_for(MAX_OBJECT_SIZE + 1)


def test_the_maximum_part_is_5_gib() -> None:
    from objathor_release.settings import adjust_part_size

    assert adjust_part_size(10 * GiB, 6 * GiB) == MAX_PART_SIZE
    with pytest.raises(UsageError, match="5 MiB to 5 GiB"):
        UploadConfig(chunk_size=MAX_PART_SIZE + 1)


@settings(max_examples=300, deadline=None)
@given(size=st.integers(min_value=1, max_value=MAX_OBJECT_SIZE),
       chunk=st.integers(min_value=MIN_PART_SIZE, max_value=MAX_PART_SIZE))
def test_every_layout_keeps_the_s3_limits(size: int, chunk: int) -> None:
    config = UploadConfig(chunk_size=chunk, multipart_threshold=MIN_PART_SIZE)
    job = job_of(size, config)
    if not job.multipart:
        assert size < MIN_PART_SIZE and job.parts == 1
        return
    got = ranges(job)
    assert MIN_PART_SIZE <= job.part_size <= MAX_PART_SIZE
    assert job.part_size >= chunk or job.part_size == MIN_PART_SIZE
    assert 1 <= job.parts <= MAX_PARTS
    assert all(length == job.part_size for _, length in got[:-1])  # all but the last are equal
    assert 0 < got[-1][1] <= job.part_size
    assert [off for off, _ in got] == [i * job.part_size for i in range(job.parts)]  # contiguous
    assert sum(length for _, length in got) == size


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
