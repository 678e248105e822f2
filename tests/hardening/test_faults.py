"""Faults inside the server: a failing ONNX Runtime batch, a failing job write.

The ONNX Runtime case runs the app in-process (``httpx.ASGITransport``, with the
app's lifespan run around it so models load and batchers start), because the
fault is injected by replacing a model's runner, which cannot be done across
processes.
"""

from __future__ import annotations

import asyncio
import errno
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from onnxruntime.capi.onnxruntime_pybind11_state import RuntimeException

from service.app import create_app
from service.config import Settings
from service.errors import NotFound, StorageFailed
from service.jobs import pack
from service.jobs.local import LocalJobStore
from service.jobs.record import Layer
from tests.hardening.test_bad_inputs import geotiff
from tests.helpers.asgi import in_process


async def _upload(client: httpx.AsyncClient) -> httpx.Response:
    return await client.post(
        "/predict",
        data={"model": "footprints"},
        files={"image": ("a.tif", geotiff(), "image/tiff")},
    )


def test_an_onnx_runtime_failure_fails_that_batch_with_503_and_serving_goes_on(
    model_dir: Path, tmp_path: Path
) -> None:
    # One session, so that the one failing run meets the batch (helpers would share them out).
    settings = Settings(
        model_dir=model_dir, job_dir=tmp_path / "jobs", warmup=False, cpu_instances=1
    )
    app = create_app(settings)

    async def scenario() -> None:
        async with in_process(app) as client:
            state = app.state.attnserve
            session = state.repository.get("footprints").session._session
            real_run = session.run
            failures = {"left": 1}

            def failing_run(*args: Any, **kwargs: Any) -> Any:
                if failures["left"]:
                    failures["left"] -= 1
                    # What ONNX Runtime raises when, say, the GPU runs out of memory.
                    raise RuntimeException("Failed to allocate memory for requested buffer")
                return real_run(*args, **kwargs)

            session.run = failing_run
            # Requests batched together with the failing run all fail, and only they do.
            failed = await asyncio.gather(*(_upload(client) for _ in range(3)))
            statuses = sorted(r.status_code for r in failed)
            assert 503 in statuses, [r.text for r in failed]
            assert set(statuses) <= {200, 503}
            for resp in failed:
                if resp.status_code == 503:
                    error = resp.json()["error"]
                    assert error["code"] == "inference_failed"
                    assert "inference failed" in error["message"]
                    assert "onnxruntime" not in resp.text.lower()
                    assert "allocate" not in resp.text
                    assert resp.headers["retry-after"]
            # The batcher goes on: the next requests are served.
            for _ in range(2):
                assert (await _upload(client)).status_code == 200
            assert (await client.get("/readyz")).status_code == 200
            assert state.store.count == statuses.count(200) + 2

    asyncio.run(scenario())


def test_a_failed_job_write_leaves_no_job_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalJobStore(tmp_path / "jobs", ttl_s=60)
    record = store.new_record({"name": "m", "version": "1", "task": "t"}, "raster", None)
    written: list[int] = []
    real_write = pack.write_chunked

    # The disk fills up while the second array is being written.
    def write_then_fail(f: Any, data: Any) -> None:
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(1)
        real_write(f, data)

    monkeypatch.setattr(pack, "write_chunked", write_then_fail)
    arrays = {"a": np.zeros((4, 4), np.float32), "b": np.ones((4, 4), np.float32)}
    # Callers get a 503-mapped error that names no path.
    with pytest.raises(StorageFailed, match="could not be stored"):
        store.save(record, arrays)
    monkeypatch.undo()
    with pytest.raises(NotFound):
        store.load(record.id)
    leftovers = [p for p in (tmp_path / "jobs").rglob("*") if p.is_file()]
    assert leftovers == []
    assert store.count == 0
    # The same store keeps working.
    store.save(record, arrays)
    assert store.load(record.id).id == record.id


def test_a_reader_never_sees_a_half_written_job(tmp_path: Path) -> None:
    store = LocalJobStore(tmp_path / "jobs", ttl_s=60)
    records = [
        store.new_record({"name": "m", "version": "1", "task": "t"}, "raster", None)
        for _ in range(20)
    ]
    arrays = {f"layer{i}": np.random.default_rng(i).random((64, 64)) for i in range(6)}
    for r in records:
        r.layers = [Layer(name, "attention", "spatial", [64, 64], "float64") for name in arrays]
    seen_partial: list[str] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            for r in records:
                try:
                    loaded = store.load(r.id)
                except NotFound:
                    continue
                for name in arrays:
                    try:
                        store.array(loaded, name)
                    except (OSError, NotFound, ValueError):
                        seen_partial.append(r.id)

    thread = threading.Thread(target=reader)
    thread.start()
    for r in records:
        store.save(r, arrays)
    done.set()
    thread.join()
    assert seen_partial == []
