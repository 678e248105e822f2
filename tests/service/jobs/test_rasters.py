"""GDAL reads of a job's stored rasters through the store's streams."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from rasterio.windows import Window

from service.errors import NotFound
from service.jobs.local import LocalJobStore
from service.jobs.rasters import open_raster
from service.jobs.record import JobRecord
from tests.helpers.geotiff import geotiff

MODEL = {"name": "m", "version": "1", "task": "segmentation"}


def _job(tmp_path: Path) -> tuple[LocalJobStore, JobRecord, np.ndarray]:
    store = LocalJobStore(tmp_path / "jobs", ttl_s=60)
    data = np.random.default_rng(0).random((2, 300, 200)).astype(np.float32)
    record = store.new_record(MODEL, "raster", None)
    cog = geotiff(data, tiled=True, blockxsize=128, blockysize=128)
    store.save(record, {}, {"prediction.tif": cog})
    return store, record, data


def test_a_stored_raster_reads_whole_and_by_window(tmp_path: Path) -> None:
    store, record, data = _job(tmp_path)
    with open_raster(store, record, "prediction.tif", driver="GTiff") as ds:
        assert (ds.count, ds.height, ds.width) == (2, 300, 200)
        assert ds.crs is not None
        np.testing.assert_array_equal(ds.read(), data)
        window = ds.read(2, window=Window(150, 250, 50, 50))
        np.testing.assert_array_equal(window, data[1, 250:300, 150:200])


def test_readers_on_several_threads_do_not_collide(tmp_path: Path) -> None:
    store, record, data = _job(tmp_path)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            for _ in range(10):
                with open_raster(store, record, "prediction.tif") as ds:
                    np.testing.assert_array_equal(ds.read(1), data[0])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_an_open_raster_outlives_a_delete_and_a_gone_one_is_not_found(tmp_path: Path) -> None:
    store, record, data = _job(tmp_path)
    with open_raster(store, record, "prediction.tif") as ds:
        assert store.delete(record.id)
        np.testing.assert_array_equal(ds.read(1), data[0])
    with pytest.raises(NotFound, match="deleted"), open_raster(store, record, "prediction.tif"):
        pass
