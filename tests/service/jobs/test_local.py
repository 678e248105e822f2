"""The local-directory job store: atomic writes, TTL, owners, restarts and hostile ids."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from service.errors import NotFound, StorageFailed
from service.jobs.local import LocalJobStore
from service.jobs.record import Layer, owner_of

MODEL = {"name": "m", "version": "1", "task": "segmentation"}


def _save(store: LocalJobStore, owner: str | None = None) -> str:
    record = store.new_record(MODEL, "raster", owner)
    record.layers.append(Layer("gate_1", "attention", "spatial", [2, 2], "float32"))
    store.save(record, {"gate_1": np.eye(2, dtype=np.float32)})
    return record.id


def test_saved_job_survives_a_new_store_on_the_same_directory(tmp_path: Path) -> None:
    job_id = _save(LocalJobStore(tmp_path, ttl_s=60))
    reopened = LocalJobStore(tmp_path, ttl_s=60)
    record = reopened.load(job_id)
    np.testing.assert_array_equal(reopened.array(record, "gate_1"), np.eye(2))
    assert reopened.count == 1


def test_expired_job_is_not_found_and_cleaned(tmp_path: Path) -> None:
    store = LocalJobStore(tmp_path, ttl_s=0.2)
    job_id = _save(store)
    other = _save(store)
    time.sleep(0.3)
    with pytest.raises(NotFound):
        store.load(job_id)
    assert store.cleanup() == 1
    with pytest.raises(NotFound):
        store.load(other)
    assert store.count == 0


def test_ids_are_unguessable_and_distinct(tmp_path: Path) -> None:
    ids = {LocalJobStore.new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 24 for i in ids)


@pytest.mark.parametrize(
    "bad",
    ["../../etc/passwd", "..%2f..%2fetc", "a" * 23, "a" * 25, "aaaa\x00aaaaaaaaaaaaaaaaaaa", ""],
)
def test_hostile_ids_are_not_found(tmp_path: Path, bad: str) -> None:
    store = LocalJobStore(tmp_path, ttl_s=60)
    with pytest.raises(NotFound):
        store.load(bad)


def test_another_owner_gets_not_found(tmp_path: Path) -> None:
    store = LocalJobStore(tmp_path, ttl_s=60)
    job_id = _save(store, owner_of("key-a"))
    assert store.load(job_id, owner_of("key-a")).id == job_id
    with pytest.raises(NotFound):
        store.load(job_id, owner_of("key-b"))
    with pytest.raises(NotFound):
        store.load(job_id, None)


def test_failed_write_leaves_no_visible_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalJobStore(tmp_path, ttl_s=60)
    record = store.new_record(MODEL, "raster", None)
    real_rename = os.rename

    def broken(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "rename", broken)
    with pytest.raises(StorageFailed, match="could not be stored"):
        store.save(record, {"gate_1": np.zeros((2, 2), np.float32)})
    monkeypatch.setattr(os, "rename", real_rename)
    with pytest.raises(NotFound):
        store.load(record.id)
    assert list((tmp_path / ".tmp").iterdir()) == []
    assert store.count == 0


def test_a_store_folder_removed_under_the_server_is_made_again(tmp_path: Path) -> None:
    store = LocalJobStore(
        tmp_path / "jobs", ttl_s=60, min_free_bytes=1
    )  # statvfs before each write
    shutil.rmtree(tmp_path / "jobs")
    record = store.new_record(MODEL, "raster", None)
    store.save(record, {"p": np.zeros(2, np.float32)})
    assert store.load(record.id).id == record.id


def test_a_store_folder_that_cannot_be_made_is_a_storage_error(tmp_path: Path) -> None:
    store = LocalJobStore(tmp_path / "jobs", ttl_s=60, min_free_bytes=1)
    (tmp_path / "jobs").rename(tmp_path / "elsewhere")
    (tmp_path / "jobs").write_text("a file where the folder was")
    with pytest.raises(StorageFailed):  # a 503, not a 500
        store.save(store.new_record(MODEL, "raster", None), {"p": np.zeros(2, np.float32)})


def test_the_record_a_write_behind_caller_holds_reads_the_job_once_it_is_on_disk(
    tmp_path: Path,
) -> None:
    # A /predict answered as a GeoTIFF reads the job through the record it made,
    # possibly after the background write has taken the job out of memory.
    store = LocalJobStore(tmp_path, ttl_s=60, write_behind=True)
    record = store.new_record(MODEL, "raster", None)
    record.layers.append(Layer("p", "prediction", "probability", [2], "float32"))
    store.save_soon(record, {"p": np.arange(2, dtype=np.float32)})
    store.flush()
    np.testing.assert_array_equal(store.array(record, "p"), [0, 1])


def test_write_behind_serves_the_job_from_memory_until_it_is_on_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    store = LocalJobStore(tmp_path, ttl_s=60, write_behind=True)
    release = threading.Event()
    real_save = store.save

    def slow_save(*args, **kwargs):  # type: ignore[no-untyped-def]
        release.wait(5)
        real_save(*args, **kwargs)

    monkeypatch.setattr(store, "save", slow_save)
    record = store.new_record(MODEL, "raster", owner_of("key-of-sixteen-chars"))
    record.layers.append(Layer("gate_1", "attention", "spatial", [2], "float32"))
    store.save_soon(record, {"gate_1": np.arange(2, dtype=np.float32)})
    # Not on disk yet, but this process answers for it (owner checks included).
    assert not LocalJobStore(tmp_path, ttl_s=60, write_behind=True).count
    loaded = store.load(record.id, owner_of("key-of-sixteen-chars"))
    np.testing.assert_array_equal(store.array(loaded, "gate_1"), [0, 1])
    with pytest.raises(NotFound):
        store.load(record.id, owner_of("another-key-of-16-chars"))
    release.set()
    store.flush()
    reopened = LocalJobStore(tmp_path, ttl_s=60)
    np.testing.assert_array_equal(
        reopened.array(reopened.load(record.id, any_owner=True), "gate_1"), [0, 1]
    )


def test_deleting_a_job_being_written_behind_waits_for_it_and_removes_it(tmp_path: Path) -> None:
    store = LocalJobStore(tmp_path, ttl_s=60, write_behind=True)
    record = store.new_record(MODEL, "raster", None)
    store.save_soon(record, {"gate_1": np.zeros(2, np.float32)})
    assert store.delete(record.id)
    with pytest.raises(NotFound):
        store.load(record.id)
    store.flush()


def test_arrays_of_any_shape_and_dtype_round_trip_through_the_pack(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "probability": rng.random((3, 5)).astype(np.float32),
        "cube": rng.random((2, 3, 7, 5)).astype(np.float32),
        "class": rng.integers(0, 255, (5, 3)).astype(np.uint8),
        "half": rng.random((4, 9)).astype(np.float16),
        "fortran": np.asfortranarray(rng.random((6, 4))),
        "scalar": np.array(2.5),
        "empty": np.zeros((0, 3), np.float32),
        # Larger than one write slice, and not a whole number of slices.
        "large": rng.random((1, 301, 517)).astype(np.float32),
        "strided": rng.random((40, 3000))[:, ::3],
        "flags": rng.random((70_001,)) > 0.5,
    }
    store = LocalJobStore(tmp_path, ttl_s=60)
    record = store.new_record(MODEL, "raster", None)
    for name in arrays:
        record.layers.append(Layer(name, "prediction", "x", [], "float32"))
    store.save(record, arrays)
    job_dir = tmp_path / record.id[:2] / record.id
    # One file for all arrays beside the metadata, each image 64-byte aligned.
    assert sorted(p.name for p in job_dir.iterdir()) == ["arrays.npk", "meta.json"]
    reopened = LocalJobStore(tmp_path, ttl_s=60)
    loaded = reopened.load(record.id)
    assert all(offset % 64 == 0 for offset in loaded.packed.values())
    for name, array in arrays.items():
        got = reopened.array(loaded, name)
        assert got.dtype == array.dtype, name
        assert got.shape == array.shape, name
        np.testing.assert_array_equal(got, array)
        assert not got.flags.writeable


def test_object_arrays_are_refused_and_leave_no_job(tmp_path: Path) -> None:
    store = LocalJobStore(tmp_path, ttl_s=60)
    record = store.new_record(MODEL, "raster", None)
    with pytest.raises(ValueError, match="Python objects"):
        store.save(record, {"o": np.array([object()])})
    with pytest.raises(NotFound):
        store.load(record.id)


def _save_sized(store: LocalJobStore, kib: int, state: str = "done") -> str:
    record = store.new_record(MODEL, "raster", None)
    record.state = state
    record.layers.append(Layer("p", "prediction", "probability", [], "float32"))
    store.save(record, {"p": np.zeros(kib * 256, dtype=np.float32)})  # kib KiB of data
    return record.id


def _exists(store: LocalJobStore, job_id: str) -> bool:
    try:
        store.load(job_id)
    except NotFound:
        return False
    return True


def test_byte_cap_deletes_the_oldest_finished_jobs_first(tmp_path: Path) -> None:
    evictions: list[int] = []
    store = LocalJobStore(tmp_path, ttl_s=3600, max_bytes=350 * 1024, on_evict=evictions.append)
    ids = [_save_sized(store, 100) for _ in range(5)]
    assert [_exists(store, i) for i in ids] == [False, False, True, True, True]
    assert store.evicted == 2
    assert sum(evictions) == 2
    assert store.count == 3


def test_unfinished_jobs_are_never_deleted_to_make_room(tmp_path: Path) -> None:
    store = LocalJobStore(tmp_path, ttl_s=3600, max_bytes=350 * 1024)
    running = _save_sized(store, 100, state="running")
    done = [_save_sized(store, 100) for _ in range(4)]
    assert _exists(store, running)
    assert [_exists(store, i) for i in done] == [False, False, True, True]


def test_jobs_found_at_start_count_oldest_first(tmp_path: Path) -> None:
    first = LocalJobStore(tmp_path, ttl_s=3600)
    old = [_save_sized(first, 100) for _ in range(3)]
    for age, job_id in enumerate(old):  # the directories' times order them
        stamp = time.time() - 1000 + age
        os.utime(tmp_path / job_id[:2] / job_id, (stamp, stamp))
    store = LocalJobStore(tmp_path, ttl_s=3600, max_bytes=350 * 1024)
    new = _save_sized(store, 100)
    assert [_exists(store, i) for i in old] == [False, True, True]
    assert _exists(store, new)


def test_free_space_floor_deletes_until_the_new_job_fits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalJobStore(tmp_path, ttl_s=3600, min_free_bytes=600 * 1024)
    # A 1 MiB volume: what the jobs take is gone from it.
    monkeypatch.setattr(
        "service.jobs.eviction.free_bytes", lambda _: 1024 * 1024 - store.room.tracked_bytes
    )
    ids = [_save_sized(store, 100) for _ in range(6)]
    # 600 KiB must stay free, so at most 424 KiB of jobs: the four newest.
    assert [_exists(store, i) for i in ids] == [False, False, True, True, True, True]
    assert store.evicted == 2


def test_a_job_deleted_elsewhere_is_forgotten_not_an_error(tmp_path: Path) -> None:
    store = LocalJobStore(tmp_path, ttl_s=3600, max_bytes=250 * 1024)
    gone = _save_sized(store, 100)
    other = LocalJobStore(tmp_path, ttl_s=3600)  # another replica on the same volume
    assert other.delete(gone)
    kept = _save_sized(store, 100)
    newest = _save_sized(store, 100)
    assert _exists(store, kept)
    assert _exists(store, newest)
    assert store.evicted == 0


def test_without_limits_nothing_is_deleted_early(tmp_path: Path) -> None:
    store = LocalJobStore(tmp_path, ttl_s=3600)
    ids = [_save_sized(store, 100) for _ in range(5)]
    assert all(_exists(store, i) for i in ids)
    assert store.make_room(10**15) == 0
