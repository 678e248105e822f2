"""The error table and handlers: one status per domain error, one body shape for all."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Request
from starlette.responses import Response

from service import errors as e
from service.api.errors import ERROR_RESPONSES, STATUS, client_closed, install, status_of
from tests.helpers.asgi import SyncClient


class StaleJob(e.NotFound):
    """A subclass the table does not name: its nearest named base decides."""


def _app() -> FastAPI:
    app = FastAPI()
    install(app)

    @app.get("/raise/{name}")
    async def raise_named(name: str) -> None:
        kinds: dict[str, e.AttnserveError] = {
            "invalid": e.InvalidInput("band count 4 does not match", field="image"),
            "raster": e.InvalidRaster("not a GeoTIFF"),
            "large": e.PayloadTooLarge("over the 1 MB limit"),
            "missing": StaleJob("no job abc"),
            "busy": e.Overloaded("queue full", retry_after_s=2.6),
            "soon": e.Overloaded("queue full", retry_after_s=0.1),
            "loading": e.NotReady("models are loading"),
            "key": e.Unauthorized("no valid API key"),
            "late": e.DeadlineExceeded("deadline passed"),
        }
        raise kinds[name]

    @app.get("/crash")
    async def crash() -> None:
        raise RuntimeError("/secret/path/model.onnx exploded")

    @app.post("/hung-up")
    async def hung_up(request: Request) -> Response:
        return client_closed(request)

    @app.get("/count")
    async def count(n: int) -> dict[str, int]:
        return {"n": n}

    return app


@pytest.fixture(scope="module")
def client() -> SyncClient:
    return SyncClient(_app(), raise_app_exceptions=False)


@pytest.mark.parametrize(
    ("name", "status", "code"),
    [
        ("invalid", 422, "invalid_input"),
        ("raster", 422, "invalid_raster"),
        ("large", 413, "payload_too_large"),
        ("missing", 404, "not_found"),
        ("busy", 503, "overloaded"),
        ("loading", 503, "not_ready"),
        ("key", 401, "unauthorized"),
        ("late", 504, "deadline_exceeded"),
    ],
)
def test_each_domain_error_has_its_status_and_code(
    client: SyncClient, name: str, status: int, code: str
) -> None:
    resp = client.get(f"/raise/{name}")
    assert resp.status_code == status
    error = resp.json()["error"]
    assert error["status"] == status
    assert error["code"] == code
    assert set(error) <= {"code", "message", "status", "detail"}
    assert resp.headers["cache-control"] == "no-store"


def test_detail_travels_with_the_message(client: SyncClient) -> None:
    error = client.get("/raise/invalid").json()["error"]
    assert error["message"] == "band count 4 does not match"
    assert error["detail"] == {"field": "image"}
    assert "detail" not in client.get("/raise/raster").json()["error"]


def test_retry_and_auth_headers(client: SyncClient) -> None:
    assert client.get("/raise/busy").headers["retry-after"] == "3"
    # Never "retry after 0 seconds".
    assert client.get("/raise/soon").headers["retry-after"] == "1"
    assert client.get("/raise/loading").headers["retry-after"] == "5"
    assert client.get("/raise/key").headers["www-authenticate"] == "Bearer"


def test_unexpected_errors_are_500_without_their_text(client: SyncClient) -> None:
    resp = client.get("/crash")
    assert resp.status_code == 500
    assert resp.json() == {
        "error": {"code": "internal_error", "message": "internal server error", "status": 500}
    }
    assert "secret" not in resp.text


def test_validation_and_routing_errors_keep_the_shape(client: SyncClient) -> None:
    bad = client.get("/count", params={"n": "many"})
    assert bad.status_code == 422
    error = bad.json()["error"]
    assert error["code"] == "invalid_input"
    assert error["message"].startswith("query.n:")
    assert error["detail"]["errors"][0]["field"] == "query.n"
    missing = client.get("/nowhere")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert client.post("/count").json()["error"]["code"] == "method_not_allowed"


def test_a_client_that_hung_up_gets_the_499_in_the_same_shape(
    client: SyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="service.api.errors"):
        resp = client.post("/hung-up")
    assert resp.status_code == 499
    assert resp.json()["error"] == {
        "code": "client_closed_request",
        "message": "the client closed the connection",
        "status": 499,
    }
    assert "POST /hung-up" in caplog.text


def test_the_most_specific_class_decides_and_unknown_ones_are_500() -> None:
    assert status_of(e.InvalidRaster("x")) == 422
    assert status_of(StaleJob("x")) == 404
    assert status_of(e.AttnserveError("x")) == 500
    # Every status the table can give is documented on the routes.
    assert set(STATUS.values()) <= set(ERROR_RESPONSES) | {409, 503, 504}
