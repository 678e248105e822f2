"""The store interface: stored files as streams, and the store the settings name."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from service.config import Settings
from service.errors import NotFound
from service.jobs.local import LocalJobStore
from service.jobs.record import Layer
from service.jobs.store import JobStore, StoredFile, open_reader, open_store

MODEL = {"name": "m", "version": "1", "task": "segmentation"}
DATA = bytes(range(256)) * 1000


def test_a_stored_file_streams_any_range_in_chunks() -> None:
    stored = StoredFile("f.bin", len(DATA), io.BytesIO(DATA))
    assert b"".join(stored.chunks()) == DATA
    parts = list(stored.chunks(10, 70_000, size=4096))
    assert all(len(p) <= 4096 for p in parts)
    assert b"".join(parts) == DATA[10:70_000]
    assert b"".join(stored.chunks(len(DATA) - 5, 10**9)) == DATA[-5:]
    assert list(stored.chunks(len(DATA))) == []
    stored.seek(3)
    assert stored.read(2) == DATA[3:5]
    assert stored.tell() == 5
    with stored:
        pass
    assert stored.closed


def test_the_settings_open_a_local_store_on_the_job_dir(tmp_path: Path) -> None:
    settings = Settings(job_dir=tmp_path / "jobs", job_ttl_s=123.0, job_max_mb=1.0)
    evicted: list[int] = []
    store: JobStore = open_store(settings, on_evict=evicted.append)
    assert isinstance(store, LocalJobStore)
    assert store.ttl_s == 123.0
    assert store.room.max_bytes == 2**20
    for _ in range(3):  # 400 KiB each against a 1 MiB cap
        record = store.new_record(MODEL, "raster", None)
        record.layers.append(Layer("p", "prediction", "probability", [100 * 1024], "float32"))
        store.save(record, {"p": np.zeros(100 * 1024, np.float32)})
    assert sum(evicted) == 1


def test_a_reader_opens_the_same_store_by_its_address(tmp_path: Path) -> None:
    store = open_store(Settings(job_dir=tmp_path / "jobs"))
    record = store.new_record(MODEL, "raster", None)
    record.layers.append(Layer("p", "prediction", "probability", [4], "float64"))
    store.save(record, {"p": np.arange(4.0)}, {"input_0.tif": b"bytes of a file"})
    reader = open_reader(store.address)
    loaded = reader.load(record.id)
    np.testing.assert_array_equal(reader.array(loaded, "p"), np.arange(4.0))
    with reader.open_file(loaded, "input_0.tif") as stored:
        assert stored.size == 15
        assert stored.read() == b"bytes of a file"
    with pytest.raises(NotFound):
        reader.open_file(loaded, "missing.tif")
    with pytest.raises(NotFound):
        reader.open_file(loaded, "../meta.json")
