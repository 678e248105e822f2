"""Downloads of stored job files: whole, by byte range, and after the job is gone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.api.downloads import byte_range, file_response
from service.errors import NotFound
from service.jobs.local import LocalJobStore
from tests.helpers.asgi import SyncClient

MODEL = {"name": "m", "version": "1", "task": "segmentation"}
DATA = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-9", (0, 10)),
        ("bytes=100-", (100, 1000)),
        ("bytes=-10", (990, 1000)),
        ("bytes=990-5000", (990, 1000)),
        ("bytes=0-1,5-6", None),  # several ranges: the whole file
        ("items=0-1", None),
        ("bytes=-", None),
    ],
)
def test_byte_ranges(header: str | None, expected: tuple[int, int] | None) -> None:
    assert byte_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5-2"])
def test_ranges_past_the_end_are_not_satisfiable(header: str) -> None:
    with pytest.raises(ValueError, match="not satisfiable"):
        byte_range(header, 1000)


@pytest.fixture
def client(tmp_path: Path) -> SyncClient:
    store = LocalJobStore(tmp_path / "jobs", ttl_s=60)
    record = store.new_record(MODEL, "raster", None)
    store.save(record, {}, {"prediction.tif": DATA})

    async def download(request: Request) -> Response:
        if request.query_params.get("delete"):
            response = file_response(store, record, "prediction.tif")
            store.delete(record.id)  # gone before the body is sent
            return response
        return file_response(store, record, "prediction.tif")

    return SyncClient(Starlette(routes=[Route("/file", download, methods=["GET", "HEAD"])]))


def test_the_whole_file_with_its_headers(client: SyncClient) -> None:
    response = client.get("/file")
    assert response.status_code == 200
    assert response.content == DATA
    assert response.headers["content-length"] == str(len(DATA))
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["content-type"].startswith("image/tiff")
    assert "-prediction.tif" in response.headers["content-disposition"]


def test_a_range_is_a_206_with_just_those_bytes(client: SyncClient) -> None:
    response = client.get("/file", headers={"Range": "bytes=70000-70099"})
    assert response.status_code == 206
    assert response.content == DATA[70_000:70_100]
    assert response.headers["content-range"] == f"bytes 70000-70099/{len(DATA)}"
    assert response.headers["content-length"] == "100"


def test_a_range_past_the_end_is_a_416(client: SyncClient) -> None:
    response = client.get("/file", headers={"Range": f"bytes={len(DATA)}-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(DATA)}"


def test_head_has_the_headers_and_no_body(client: SyncClient) -> None:
    response = client.head("/file")
    assert response.status_code == 200
    assert response.headers["content-length"] == str(len(DATA))
    assert response.content == b""


def test_a_job_deleted_after_the_answer_still_downloads_whole(client: SyncClient) -> None:
    response = client.get("/file?delete=1")
    assert response.status_code == 200
    assert response.content == DATA


def test_a_job_already_gone_is_not_found(tmp_path: Path) -> None:
    store = LocalJobStore(tmp_path / "jobs", ttl_s=60)
    record = store.new_record(MODEL, "raster", None)
    store.save(record, {}, {"prediction.tif": DATA})
    store.delete(record.id)
    with pytest.raises(NotFound):
        file_response(store, record, "prediction.tif")
