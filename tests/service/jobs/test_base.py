"""What every backend shares: visibility, TTL, owners, write-behind and eviction.

Each test runs on the local directory and on a real S3-API server (SeaweedFS).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from service.errors import NotFound
from service.jobs.base import BaseJobStore
from service.jobs.local import LocalJobStore
from service.jobs.objects import MAX_FETCH
from service.jobs.record import Layer, owner_of
from service.jobs.s3 import S3JobStore

MODEL = {"name": "m", "version": "1", "task": "segmentation"}
Opener = Callable[..., BaseJobStore]


@pytest.fixture(params=["local", "s3"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    """Opens a store of one backend on the same place each time (another replica)."""
    if request.param == "local":
        return lambda **kw: LocalJobStore(tmp_path / "jobs", **kw)
    url = request.getfixturevalue("s3_store_url")
    return lambda **kw: S3JobStore(url, tmp_path / "scratch", **kw)


def _save(store: BaseJobStore, owner: str | None = None, size: int = 4) -> str:
    record = store.new_record(MODEL, "raster", owner)
    record.layers.append(Layer("p", "prediction", "probability", [size], "float32"))
    store.save(record, {"p": np.arange(size, dtype=np.float32)})
    return record.id


def test_a_job_saved_by_one_store_is_read_by_another(open_store: Opener) -> None:
    job_id = _save(open_store(ttl_s=60), size=300_000)
    other = open_store(ttl_s=60)
    assert other.count == 1
    assert other.exists(job_id)
    record = other.load(job_id)
    values = other.array(record, "p")
    np.testing.assert_array_equal(values, np.arange(300_000, dtype=np.float32))
    assert not values.flags.writeable
    with pytest.raises(NotFound, match="no stored array"):
        other.array(dataclasses.replace(record, packed={}), "p")


def test_expired_jobs_are_not_found_and_cleaned_up(open_store: Opener) -> None:
    store = open_store(ttl_s=0.5)
    first, second = _save(store), _save(store)
    time.sleep(0.6)
    with pytest.raises(NotFound, match="expired"):
        store.load(first)
    assert not store.exists(first)
    assert store.cleanup() == 1
    assert not store.exists(second)
    assert store.count == 0


def test_another_api_key_gets_not_found(open_store: Opener) -> None:
    store = open_store(ttl_s=60)
    job_id = _save(store, owner_of("key-a" * 4))
    assert store.load(job_id, owner_of("key-a" * 4)).id == job_id
    with pytest.raises(NotFound):
        store.load(job_id, owner_of("key-b" * 4))
    with pytest.raises(NotFound):
        store.load(job_id)
    assert store.load(job_id, any_owner=True).id == job_id


def test_written_behind_jobs_are_served_from_memory_then_stored(open_store: Opener) -> None:
    store = open_store(ttl_s=60, write_behind=True)
    record = store.new_record(MODEL, "raster", None)
    record.layers.append(Layer("p", "prediction", "probability", [3], "float32"))
    store.save_soon(record, {"p": np.ones(3, np.float32)})
    np.testing.assert_array_equal(store.array(store.load(record.id), "p"), np.ones(3))
    store.flush()
    other = open_store(ttl_s=60)
    np.testing.assert_array_equal(other.array(other.load(record.id), "p"), np.ones(3))


def test_a_spooled_upload_is_stored_as_the_jobs_file_and_left_to_its_spool(
    open_store: Opener,
) -> None:
    # An upload spooled to the store's upload folder, larger than one ranged
    # fetch (an object store uploads it in parts): stored whole, checked on a
    # local copy first; the spooled file stays the spool's to remove.
    store = open_store(ttl_s=60)
    data = np.random.default_rng(0).bytes(MAX_FETCH + 12345)
    spooled = store.upload_dir / "upload-test.tif"
    spooled.parent.mkdir(parents=True, exist_ok=True)
    spooled.write_bytes(data)
    record = store.new_record(MODEL, "raster", None)
    record.params = {"inputs": ["input_0.tif"]}
    checked: list[bytes] = []
    store.save(
        record, {}, {"input_0.tif": spooled}, lambda paths: checked.append(paths[0].read_bytes())
    )
    assert checked == [data]
    assert spooled.read_bytes() == data
    spooled.unlink()  # the request ends; the job's copy stays
    with open_store(ttl_s=60).open_file(record, "input_0.tif") as f:
        assert f.size == len(data)
        assert f.read() == data


def test_the_oldest_finished_jobs_go_first_past_the_byte_cap(open_store: Opener) -> None:
    evicted: list[int] = []
    store = open_store(ttl_s=60, max_bytes=2**20, on_evict=evicted.append)
    running = store.new_record(MODEL, "raster", None)
    running.state = "running"
    store.save(running, {}, {"input_0.tif": b"x" * 1000})
    ids = [_save(store, size=100_000) for _ in range(4)]  # 400 kB each against 1 MiB
    assert sum(evicted) == 2
    assert [store.exists(i) for i in ids] == [False, False, True, True]
    assert store.exists(running.id)  # unfinished jobs are never evicted


def test_unfinished_jobs_are_listed_oldest_first(open_store: Opener) -> None:
    store = open_store(ttl_s=60)
    queued = []
    for _ in range(2):
        record = store.new_record(MODEL, "raster", None)
        record.state = "queued"
        store.save(record, {})
        queued.append(record.id)
    _save(store)
    assert [r.id for r in open_store(ttl_s=60).unfinished()] == queued


@pytest.mark.parametrize("bad", ["../../etc/passwd", "a" * 23, "", "aaaa/aaaaaaaaaaaaaaaaaaa"])
def test_hostile_ids_are_not_found(open_store: Opener, bad: str) -> None:
    store = open_store(ttl_s=60)
    with pytest.raises(NotFound):
        store.load(bad)
    with pytest.raises(NotFound):
        store.delete(bad)
