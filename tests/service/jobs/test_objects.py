"""Objects of an S3-API store: URLs, ranged reads as a file, arrays of a pack, downloads."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import obstore
import pytest
from obstore.store import S3Store

from service.errors import NotFound
from service.jobs.objects import (
    HEADER_PROBE,
    MAX_FETCH,
    MIN_FETCH,
    PackParts,
    connect,
    download,
    open_object,
    parse_url,
    read_array,
    upload_parts,
)
from service.jobs.pack import write_pack
from tests.helpers.objectstore import count_range_reads


@pytest.mark.parametrize(
    ("url", "parsed"),
    [("s3://b/jobs/x/", ("b", "jobs/x")), ("s3://b", ("b", "")), ("s3://b/", ("b", ""))],
)
def test_urls_name_a_bucket_and_a_prefix(url: str, parsed: tuple[str, str]) -> None:
    assert parse_url(url) == parsed


@pytest.mark.parametrize("url", ["gs://b/x", "s3:///x", "/var/jobs", "s3://b/x?versionId=1"])
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="s3://bucket/prefix"):
        parse_url(url)


@pytest.fixture
def objects(s3_store_url: str) -> S3Store:
    return connect(s3_store_url)


def test_arrays_of_a_pack_are_read_by_range(objects: S3Store) -> None:
    arrays = {
        "small": np.arange(6, dtype=np.int16).reshape(2, 3),
        "large": np.linspace(0, 1, HEADER_PROBE, dtype=np.float64),  # past the header probe
        "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
        "scalar": np.array(7, dtype=np.uint8),
        "empty": np.zeros((0, 5), np.float32),
    }
    pack = io.BytesIO()
    offsets = write_pack(pack, arrays)
    obstore.put(objects, "j/arrays.npk", pack.getvalue())
    for name, expected in arrays.items():
        got = read_array(objects, "j/arrays.npk", offsets[name])
        assert got.dtype == expected.dtype
        np.testing.assert_array_equal(got, expected)
        assert not got.flags.writeable
    with pytest.raises(NotFound):
        read_array(objects, "j/missing.npk", 0)


def test_an_object_opens_as_a_seekable_file(objects: S3Store) -> None:
    data = bytes(range(256)) * 10_000
    obstore.put(objects, "j/f.bin", data)
    with open_object(objects, "j/f.bin", "f.bin") as stored:
        assert stored.size == len(data)
        stored.seek(-10, 2)
        assert stored.read() == data[-10:]
        stored.seek(1000)
        assert stored.read(5) == data[1000:1005]
        assert stored.tell() == 1005
    with pytest.raises(NotFound):
        open_object(objects, "j/none.bin", "none.bin")


def test_a_download_appears_whole_or_not_at_all(objects: S3Store, tmp_path: Path) -> None:
    obstore.put(objects, "j/in.tif", b"x" * 100_000)
    download(objects, "j/in.tif", tmp_path / "in.tif")
    assert (tmp_path / "in.tif").read_bytes() == b"x" * 100_000
    with pytest.raises(NotFound):
        download(objects, "j/none.tif", tmp_path / "none.tif")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.tif"]


def test_reads_that_carry_on_fetch_more_at_a_time(
    objects: S3Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = bytes(range(256)) * (20 * 4096)  # 20 MiB
    obstore.put(objects, "j/big.tif", data)
    fetched = count_range_reads(monkeypatch)
    with open_object(objects, "j/big.tif", "big.tif") as stored:
        assert b"".join(stored.chunks()) == data  # a download, 64 KiB at a time
        assert len(fetched) <= 9
        assert max(fetched) == MAX_FETCH
        fetched.clear()
        stored.seek(5_000_000)
        assert stored.read(100) == data[5_000_000:5_000_100]  # a jump: a small GET again
        assert fetched == [MIN_FETCH]


@pytest.mark.parametrize("side", [64, 2048])  # one PUT; a multipart upload past MAX_FETCH
def test_a_pack_uploads_from_its_arrays_memory(objects: S3Store, side: int) -> None:
    arrays = {
        "a": np.random.default_rng(0).random((side, side), dtype=np.float32),
        "b": np.arange(10, dtype=np.int64),
    }
    parts = PackParts()
    offsets = write_pack(parts, arrays)  # type: ignore[arg-type]
    views = [np.frombuffer(part, np.uint8) for part in parts.parts]
    assert any(np.shares_memory(view, arrays["a"]) for view in views)  # not copied
    upload_parts(objects, "j/arrays.npk", parts)
    assert obstore.head(objects, "j/arrays.npk")["size"] == parts.size
    for name, expected in arrays.items():
        np.testing.assert_array_equal(read_array(objects, "j/arrays.npk", offsets[name]), expected)
