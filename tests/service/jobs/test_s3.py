"""The object-store job store against a real S3-API server (SeaweedFS on 127.0.0.1)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import numpy as np
import obstore
import pytest
from rasterio.windows import Window

from service.config import Settings
from service.errors import NotFound, StorageFailed
from service.jobs import s3
from service.jobs.rasters import open_raster
from service.jobs.record import Layer
from service.jobs.s3 import S3JobStore
from service.jobs.store import open_reader, open_store
from tests.helpers.geotiff import geotiff
from tests.helpers.objectstore import count_range_reads
from tests.helpers.server import REPO

MODEL = {"name": "m", "version": "1", "task": "segmentation"}


def _keys(store: S3JobStore) -> set[str]:
    return {meta["path"] for batch in obstore.list(store.objects) for meta in batch}


def _scene(store: S3JobStore) -> str:
    """A queued scene job with its input, as the job service stores one."""
    record = store.new_record(MODEL, "raster", None)
    record.state = "queued"
    record.params = {"inputs": ["input_0.tif"]}
    store.save(record, {}, {"input_0.tif": b"GeoTIFF bytes " * 1000})
    return record.id


def test_a_job_is_objects_under_its_id_with_meta_json(s3_store_url: str, tmp_path: Path) -> None:
    store = S3JobStore(s3_store_url, tmp_path / "scratch", ttl_s=60)
    record = store.new_record(MODEL, "raster", None)
    record.layers.append(Layer("p", "prediction", "probability", [2, 2], "float32"))
    checked: list[list[Path]] = []
    store.save(record, {"p": np.eye(2, dtype=np.float32)}, {"input_0.tif": b"abc"}, checked.append)
    assert _keys(store) == {
        f"{record.id}/{name}" for name in ("meta.json", "arrays.npk", "input_0.tif")
    }
    assert [p.read_bytes() for p in checked[0]] == [b"abc"]  # the check saw a local copy
    prefix = s3_store_url.split("/", 3)[3]
    assert store.address == s3_store_url
    assert all(prefix not in key for key in _keys(store))  # keys are relative to the prefix


def test_a_refused_check_leaves_nothing(s3_store_url: str, tmp_path: Path) -> None:
    store = S3JobStore(s3_store_url, tmp_path / "scratch", ttl_s=60)
    record = store.new_record(MODEL, "raster", None)

    def refuse(paths: list[Path]) -> None:
        raise ValueError("not a GeoTIFF")

    with pytest.raises(ValueError, match="not a GeoTIFF"):
        store.save(record, {}, {"input_0.tif": b"abc"}, refuse)
    assert _keys(store) == set()
    assert not (tmp_path / "scratch" / record.id).exists()


# A writer killed (SIGKILL) once its arrays are uploaded and before its meta.json.
_KILLED_WRITER = """
import os, sys, time
import numpy as np
import obstore
from service.jobs.record import Layer
from service.jobs.s3 import S3JobStore

real_put = obstore.put
def put(store, key, data, **kw):
    if key.endswith("meta.json"):
        print("uploaded", flush=True)
        time.sleep(60)
    return real_put(store, key, data, **kw)
obstore.put = put
store = S3JobStore(sys.argv[1], None, ttl_s=60)
record = store.new_record({"name": "m", "version": "1", "task": "t"}, "raster", None)
record.layers.append(Layer("p", "prediction", "probability", [1000], "float32"))
print(record.id, flush=True)
store.save(record, {"p": np.ones(1000, np.float32)})
"""


def test_a_write_killed_before_its_meta_leaves_no_visible_job(
    s3_store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(_KILLED_WRITER), s3_store_url],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=os.environ,
    )
    assert writer.stdout is not None
    job_id = writer.stdout.readline().strip()
    assert writer.stdout.readline().strip() == "uploaded"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    writer.stdout.close()
    store = S3JobStore(s3_store_url, tmp_path / "scratch", ttl_s=60)
    assert _keys(store) == {f"{job_id}/arrays.npk"}  # the half job is there, but nobody sees it
    assert not store.exists(job_id)
    with pytest.raises(NotFound):
        store.load(job_id)
    assert store.count == 0
    assert store.unfinished() == []
    store.cleanup()
    assert _keys(store) == {f"{job_id}/arrays.npk"}  # too recent: it may still be being written
    monkeypatch.setattr(s3, "_STALE_S", 0.0)
    store.cleanup()
    assert _keys(store) == set()


def test_another_replica_runs_a_scene_job_and_uploads_its_outputs(
    s3_store_url: str, tmp_path: Path
) -> None:
    job_id = _scene(S3JobStore(s3_store_url, tmp_path / "a", ttl_s=60))
    runner = S3JobStore(s3_store_url, tmp_path / "b", ttl_s=60, max_bytes=2**30)
    record = runner.load(job_id)
    work = runner.workspace(record)
    assert work.parent == tmp_path / "b"
    assert (work / "input_0.tif").read_bytes() == b"GeoTIFF bytes " * 1000  # downloaded
    record.state = "running"
    runner.update(record)
    (work / "prediction.tif").write_bytes(b"a COG")
    (work / "attention.partial.tif").write_bytes(b"unfinished")
    assert f"{job_id}/prediction.tif" not in _keys(runner)  # nothing leaves while it runs
    record.state = "done"
    runner.update(record)
    assert _keys(runner) == {
        f"{job_id}/{name}" for name in ("meta.json", "input_0.tif", "prediction.tif")
    }
    assert not work.exists()
    assert runner.room.tracked_bytes == 14_000 + 5  # input and outputs count against the cap
    reader = open_reader(s3_store_url)
    with reader.open_file(reader.load(job_id), "prediction.tif") as stored:
        assert stored.read() == b"a COG"


def test_a_failed_job_keeps_no_partial_outputs(s3_store_url: str, tmp_path: Path) -> None:
    store = S3JobStore(s3_store_url, tmp_path / "scratch", ttl_s=60)
    record = store.load(_scene(store))
    (store.workspace(record) / "prediction.tif").write_bytes(b"half")
    record.state = "failed"
    store.update(record)
    assert f"{record.id}/prediction.tif" not in _keys(store)
    assert not (tmp_path / "scratch" / record.id).exists()
    assert store.load(record.id).state == "failed"


def test_files_are_read_with_ranged_gets(s3_store_url: str, tmp_path: Path) -> None:
    data = os.urandom(3 * 2**20 + 17)
    store = S3JobStore(s3_store_url, tmp_path / "scratch", ttl_s=60)
    record = store.new_record(MODEL, "raster", None)
    store.save(record, {}, {"out.tif": data})
    with store.open_file(record, "out.tif") as stored:
        assert stored.size == len(data)
        stored.seek(2 * 2**20 + 5)
        assert stored.read(10) == data[2 * 2**20 + 5 : 2 * 2**20 + 15]
        assert b"".join(stored.chunks(100, 2**20 + 300)) == data[100 : 2**20 + 300]
        assert b"".join(stored.chunks()) == data
    for name in ("missing.tif", "meta.json", "arrays.npk", "../meta.json", ".hidden"):
        with pytest.raises(NotFound):
            store.open_file(record, name)


def test_presigned_urls_fetch_the_object_without_the_server(
    s3_store_url: str, tmp_path: Path
) -> None:
    store = S3JobStore(s3_store_url, tmp_path / "scratch", ttl_s=60, presign_s=60)
    record = store.new_record(MODEL, "raster", None)
    store.save(record, {}, {"out.tif": b"cog bytes"})
    url = store.presign(record, "out.tif")
    assert url is not None
    assert "X-Amz-Signature=" in url
    assert httpx.get(url).content == b"cog bytes"
    assert httpx.get(url.replace("X-Amz-Signature=", "X-Amz-Signature=0")).status_code == 403
    with pytest.raises(NotFound):
        store.presign(record, "missing.tif")
    assert S3JobStore(s3_store_url, None, ttl_s=60, scan=False).presign(record, "out.tif") is None


def test_delete_removes_every_object(s3_store_url: str, tmp_path: Path) -> None:
    store = S3JobStore(s3_store_url, tmp_path / "scratch", ttl_s=60)
    job_id = _scene(store)
    assert store.count == 1
    assert store.delete(job_id)
    assert _keys(store) == set()
    assert not (tmp_path / "scratch" / job_id).exists()
    assert store.count == 0
    assert not store.delete(job_id)


def test_the_settings_open_an_object_store(s3_store_url: str, tmp_path: Path) -> None:
    settings = Settings(
        job_store=s3_store_url + "/", job_dir=tmp_path / "scratch", presign=True, job_max_mb=2
    )
    store = open_store(settings)
    assert isinstance(store, S3JobStore)
    assert store.address == s3_store_url
    assert store.presign_s == 900.0
    assert store.room.max_bytes == 2 * 2**20
    assert store.scratch == tmp_path / "scratch"


def test_an_unreachable_store_fails_with_storage_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    with pytest.raises(OSError, match="cannot be listed"):
        S3JobStore("s3://bucket/jobs", tmp_path, ttl_s=60)
    store = S3JobStore("s3://bucket/jobs", tmp_path, ttl_s=60, scan=False)
    record = store.new_record(MODEL, "raster", None)
    with pytest.raises(StorageFailed):
        store.save(record, {"p": np.ones(2)})
    with pytest.raises(StorageFailed):
        store.load(record.id)


def test_cleanup_reads_only_records_old_enough_to_have_expired(
    s3_store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = S3JobStore(s3_store_url, tmp_path / "scratch", ttl_s=3600)
    ids = [_scene(store) for _ in range(3)]
    read: list[str] = []
    real = S3JobStore._meta

    def counted(self: S3JobStore, job_id: str) -> dict[str, object]:
        read.append(job_id)
        return real(self, job_id)

    monkeypatch.setattr(S3JobStore, "_meta", counted)
    assert store.cleanup() == 0
    assert read == []  # a day's jobs cost one listing, not a read each
    short = S3JobStore(s3_store_url, tmp_path / "scratch", ttl_s=1)
    assert short.cleanup() == 0  # queued jobs never expire
    assert sorted(read) == sorted(ids)


def test_a_window_of_a_stored_cog_costs_a_small_part_of_it(
    s3_store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = np.random.default_rng(1).random((1, 2048, 2048)).astype(np.float32)
    cog = geotiff(data, tiled=True, blockxsize=256, blockysize=256)  # 16 MiB, uncompressed
    store = S3JobStore(s3_store_url, tmp_path / "scratch", ttl_s=60)
    record = store.new_record(MODEL, "raster", None)
    store.save(record, {}, {"prediction.tif": cog})
    fetched = count_range_reads(monkeypatch)
    with open_raster(store, record, "prediction.tif", driver="GTiff") as ds:
        window = ds.read(1, window=Window(1024, 1536, 256, 256))
    np.testing.assert_array_equal(window, data[0, 1536:1792, 1024:1280])
    assert sum(fetched) < len(cog) / 20, (sum(fetched), len(cog))
