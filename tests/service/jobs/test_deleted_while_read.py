"""A job deleted between reading its record and reading its data is a 404, not a 500.

Deletion can come at any moment: the TTL, a DELETE, or the store making room.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from service.api.downloads import StoredFileResponse, file_response
from service.errors import NotFound
from service.jobs.local import LocalJobStore
from service.jobs.record import JobRecord, Layer
from service.jobs.store import JobStore
from service.pipeline.layers import LayerReader

MODEL = {"name": "m", "version": "1", "task": "segmentation"}


def _job_with_array_and_cog(store: JobStore, tmp_path: Path) -> str:
    record = store.new_record(MODEL, "raster", None)
    record.georef = {"crs": None, "transform": [1, 0, 0, 0, -1, 0], "width": 4, "height": 4}
    record.layers += [
        Layer("p", "prediction", "probability", [4, 4], "float32"),
        Layer("a", "attention", "spatial", [4, 4], "float32",
              storage="cog", file="attention.tif", band=1),
    ]  # fmt: skip
    cog = tmp_path / "attention.tif"
    profile = {"driver": "GTiff", "width": 4, "height": 4, "count": 1, "dtype": "float32",
               "transform": from_origin(0, 4, 1, 1)}  # fmt: skip
    with rasterio.open(cog, "w", **profile) as dst:
        dst.write(np.ones((1, 4, 4), dtype=np.float32))
    files = {"attention.tif": cog.read_bytes()}
    store.save(record, {"p": np.zeros((4, 4), dtype=np.float32)}, files)
    return record.id


@pytest.fixture
def deleted(tmp_path: Path) -> tuple[LocalJobStore, JobRecord]:
    store = LocalJobStore(tmp_path / "jobs", ttl_s=60)
    job_id = _job_with_array_and_cog(store, tmp_path)
    record = store.load(job_id)  # what a request has read ...
    assert store.delete(job_id)  # ... before the job goes
    return store, record


def test_array(deleted: tuple[JobStore, JobRecord]) -> None:
    store, record = deleted
    with pytest.raises(NotFound, match="deleted"):
        store.array(record, "p")


def test_cog_layer(deleted: tuple[JobStore, JobRecord]) -> None:
    store, record = deleted
    with LayerReader(record, store) as reader, pytest.raises(NotFound, match="deleted"):
        reader.read("a", slice(0, 4), slice(0, 4))


def test_stored_file(deleted: tuple[JobStore, JobRecord]) -> None:
    store, record = deleted
    with pytest.raises(NotFound, match="deleted"):
        file_response(store, record, "attention.tif")


def test_the_same_reads_work_while_the_job_exists(tmp_path: Path) -> None:
    store = LocalJobStore(tmp_path / "jobs", ttl_s=60)
    record = store.load(_job_with_array_and_cog(store, tmp_path))
    assert store.array(record, "p").shape == (4, 4)
    with LayerReader(record, store) as reader:
        assert reader.read("a", slice(0, 4), slice(0, 4)).sum() == 16
    assert str(file_response(store, record, "attention.tif").path).endswith("attention.tif")


def _download(response: StoredFileResponse) -> tuple[int, bytes]:
    """Run a response as the server would, for a plain GET; its status and body."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client stays connected
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "headers": [], "path": "/"}
    asyncio.run(response(scope, receive, send))  # type: ignore[arg-type]
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return sent[0]["status"], body


def test_a_download_outlives_a_delete_that_comes_before_it_streams(tmp_path: Path) -> None:
    store = LocalJobStore(tmp_path / "jobs", ttl_s=60)
    record = store.load(_job_with_array_and_cog(store, tmp_path))
    with store.open_file(record, "attention.tif") as stored:
        whole = stored.read()
    response = file_response(store, record, "attention.tif")  # the route has answered ...
    assert store.delete(record.id)  # ... and the job goes before the body is sent
    status, body = _download(response)
    assert status == 200
    assert body == whole
    assert not any(store.root.joinpath(".tmp").iterdir())  # the pin went with the response


def test_cleanup_removes_pins_a_crash_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalJobStore(tmp_path / "jobs", ttl_s=86_400)
    record = store.load(_job_with_array_and_cog(store, tmp_path))
    pin, pinned = store.pin(record, "attention.tif")
    assert pinned
    store.cleanup()
    assert pin.exists()  # a download may still be streaming it
    later = time.time() + 7200
    monkeypatch.setattr("service.jobs.local.time.time", lambda: later)
    store.cleanup()
    assert not pin.exists()
    assert store.file(record, "attention.tif").exists()  # the job's own file stays
