"""The Python client and the CLI's client commands, against a scripted server."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from service import cli
from service.client import (
    Client,
    PlainBar,
    Progress,
    ServerError,
    error_of,
    read_series_csv,
)

BANDS = ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]
Handler = Callable[[httpx.Request], httpx.Response]


def _job(state: str, done: int, total: int = 4) -> dict[str, object]:
    body: dict[str, object] = {
        "job_id": "J" * 24,
        "state": state,
        "progress": {"done": done, "total": total, "fraction": done / total},
        "eta_s": None if state == "done" else 2.0,
        "error": None,
    }
    if state == "done":
        body["links"] = {
            "self": f"/jobs/{'J' * 24}",
            "prediction_geotiff": f"/jobs/{'J' * 24}/prediction?format=geotiff",
            "attention_geotiff": f"/attention/{'J' * 24}?format=geotiff",
            "footprints": f"/jobs/{'J' * 24}/footprints",
        }
    return body


class ScriptedServer:
    """Answers /predict with 202, then the job's states one poll at a time."""

    def __init__(self, states: list[dict[str, object]]) -> None:
        self.states = states
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        path = request.url.path
        if path == "/predict":
            return httpx.Response(202, json=_job("queued", 0), headers={"Location": "/jobs/x"})
        if path.endswith("/footprints"):
            return httpx.Response(200, json={"type": "FeatureCollection", "features": []})
        if "format=geotiff" in str(request.url):
            return httpx.Response(200, content=b"II*\x00fake")
        if path.startswith("/jobs/"):
            return httpx.Response(200, json=self.states.pop(0))
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "no"}})


@pytest.fixture
def no_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("service.client.time.sleep", lambda _s: None)


def test_async_job_is_followed_with_progress_then_downloaded(
    tmp_path: Path, no_sleep: None
) -> None:
    server = ScriptedServer([_job("running", 1), _job("running", 3), _job("done", 4)])
    scene = tmp_path / "scene.tif"
    scene.write_bytes(b"II*\x00")
    seen: list[Progress] = []
    with Client("http://test", api_key="k", transport=httpx.MockTransport(server)) as client:
        job = client.predict_image(scene, "footprints", async_=True)
        assert job["state"] == "queued"
        job = client.wait(job, on_progress=seen.append, poll_s=0)
        files = client.save_artefacts(job, tmp_path / "out", "scene")
    assert [p.done for p in seen] == [0, 1, 3, 4]
    assert seen[-1].fraction == 1.0
    assert b'name="async"' in server.seen[0].content
    assert all(r.headers["authorization"] == "Bearer k" for r in server.seen)
    assert sorted(files) == ["attention_geotiff", "footprints", "job", "prediction_geotiff"]
    assert files["footprints"].name == "scene.footprints.geojson"
    assert json.loads(files["footprints"].read_text())["type"] == "FeatureCollection"
    assert not list((tmp_path / "out").glob("*.part"))


def test_failed_job_exits_nonzero_with_the_servers_message(
    tmp_path: Path,
    no_sleep: None,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    failed = {**_job("failed", 2), "error": {"code": "inference_failed", "message": "GPU lost"}}
    server = ScriptedServer([_job("running", 1), failed])
    _patch_transport(monkeypatch, server)
    scene = tmp_path / "scene.tif"
    scene.write_bytes(b"II*\x00")
    code = cli.main(
        [
            "predict",
            str(scene),
            "--model",
            "footprints",
            "--out",
            str(tmp_path / "o"),
            "--async",
            "--plain-progress",
            "--server",
            "http://test",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().splitlines()[-1].endswith("failed: GPU lost")
    assert " 25% 1/4 eta 2s" in err  # the plain bar showed the running state


def test_4xx_is_one_line_with_the_servers_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        body = {"error": {"code": "unsupported_raster", "status": 422, "message": "dtype x"}}
        return httpx.Response(422, json=body)

    _patch_transport(monkeypatch, refuse)
    scene = tmp_path / "scene.tif"
    scene.write_bytes(b"II*\x00")
    code = cli.main(["predict", str(scene), "--model", "footprints", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert err == "attnserve: server answered 422 unsupported_raster: dtype x\n"


def test_unreachable_server_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["models", "--server", "http://127.0.0.1:9", "--timeout", "2"])
    assert code == 3
    assert capsys.readouterr().err.startswith("attnserve: cannot reach the server")


def test_protocol_errors_are_read_too() -> None:
    resp = httpx.Response(404, json={"error": "no model named 'x'", "code": "not_found"})
    err = error_of(resp)
    assert (err.status, err.code, err.message) == (404, "not_found", "no model named 'x'")
    assert isinstance(error_of(httpx.Response(502, text="<html>")), ServerError)


def test_plain_bar_draws_fraction_and_eta() -> None:
    out = io.StringIO()
    bar = PlainBar("scene.tif", out, width=10)
    bar(Progress(0, 0))
    bar(Progress(5, 10, 3.2))
    bar.close()
    text = out.getvalue()
    assert "[#####-----]  50% 5/10 eta 4s" in text
    assert text.endswith("\n")


def test_series_csv_becomes_a_predict_body(tmp_path: Path) -> None:
    path = tmp_path / "parcels.csv"
    header = "id,date," + ",".join(BANDS) + ",valid\n"
    rows = [
        "a,2024-04-01," + ",".join(["100"] * 10) + ",1\n",
        "a,2024-05-01," + ",".join(["200"] * 10) + ",0\n",
        "b,2024-05-01," + ",".join(["300"] * 10) + ",true\n",
    ]
    path.write_text(header + "".join(rows))
    body = read_series_csv(path, "crops", BANDS)
    assert body["dates"] == ["2024-04-01", "2024-05-01"]
    a, b = body["parcels"]
    assert a["valid"] == [True, False]
    assert a["series"][1] == [200.0] * 10
    # b has no row for April: sent as an invalid date.
    assert b["valid"] == [False, True]

    path.write_text("id,date,B2\n")
    with pytest.raises(ValueError, match="missing column"):
        read_series_csv(path, "crops", BANDS)


def test_client_and_cli_import_without_server_dependencies() -> None:
    # numpy, rasterio, FastAPI and ONNX Runtime are the server's, not the client's.
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in {'numpy', 'rasterio', 'fastapi', 'starlette',"
        " 'onnxruntime', 'pydantic', 'uvicorn', 'torch'}:\n"
        "            raise ImportError('blocked ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import service.client, service.cli\n"
        "service.cli.build_parser().parse_args(['models'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _patch_transport(monkeypatch: pytest.MonkeyPatch, handler: Handler) -> None:
    original = Client.__init__

    def init(self: Client, *args: object, **kwargs: object) -> None:
        kwargs["transport"] = httpx.MockTransport(handler)
        original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Client, "__init__", init)
    monkeypatch.setattr("service.client.time.sleep", lambda _s: None)
