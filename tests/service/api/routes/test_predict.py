"""End to end against a real uvicorn server: predictions, attention, errors, metrics."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import rasterio
from rasterio.io import MemoryFile
from rasterio.transform import from_origin

from models.half import convert_to_float16
from service.runtime.cpus import usable_cpus
from tests.helpers.geotiff import geotiff
from tests.helpers.server import LiveServer


def _post_image(
    live: LiveServer, data: bytes, model: str = "footprints", **fields: str
) -> httpx.Response:
    return httpx.post(
        f"{live.url}/predict",
        data={"model": model, **fields},
        files={"image": ("scene.tif", data, "image/tiff")},
        timeout=120,
    )


def _open(data: bytes) -> rasterio.io.DatasetReader:
    return MemoryFile(data).open()


def test_cog_prediction_and_attention_keep_the_input_georeference(
    live: LiveServer, shared_data: Path
) -> None:
    path = shared_data / "cogeo.tif"
    resp = _post_image(live, path.read_bytes())
    assert resp.status_code == 200, resp.text
    body = resp.json()
    job_id = body["job_id"]
    assert body["model"]["name"] == "footprints"
    assert body["georeference"]["crs"] == "EPSG:3857"
    spatial = [a["name"] for a in body["attention"] if a["kind"] == "spatial"]
    assert len(spatial) >= 3
    channel = [a for a in body["attention"] if a["kind"] == "channel"]
    assert channel
    assert channel[0]["shape"] == [3]

    att = httpx.get(f"{live.url}/attention/{job_id}", params={"format": "geotiff"}, timeout=60)
    assert att.status_code == 200, att.text
    assert att.headers["content-type"].startswith("image/tiff")
    pred = httpx.get(f"{live.url}/jobs/{job_id}/prediction?format=geotiff", timeout=60)
    assert pred.status_code == 200
    with rasterio.open(path) as src:
        for data, bands in ((att.content, len(spatial)), (pred.content, 1 + len(spatial))):
            with _open(data) as out:
                assert out.crs == src.crs
                assert out.transform == src.transform
                assert (out.width, out.height) == (src.width, src.height)
                assert out.count == bands
                assert all(out.descriptions)
                values = out.read()
                assert np.nanmin(values) >= 0.0
                assert np.nanmax(values) <= 1.0

    listing = httpx.get(f"{live.url}/attention/{job_id}").json()
    assert [la["name"] for la in listing["layers"]] == [a["name"] for a in body["attention"]]
    one = httpx.get(f"{live.url}/attention/{job_id}/{spatial[0]}?format=geotiff")
    with _open(one.content) as out:
        assert out.count == 1
        assert out.crs == rasterio.crs.CRS.from_epsg(3857)


def test_format_geotiff_on_predict_answers_a_georeferenced_tiff(
    live: LiveServer, shared_data: Path
) -> None:
    path = shared_data / "RGB.byte.tif"
    resp = _post_image(live, path.read_bytes(), format="geotiff")
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-job-id"]
    with rasterio.open(path) as src, _open(resp.content) as out:
        assert out.crs == src.crs
        assert out.transform == src.transform
        prob = out.read(1)
        valid = src.dataset_mask() > 0
        # No prediction where the input has no data.
        assert np.isnan(prob[~valid]).all()
        assert np.isfinite(prob[valid]).all()


def test_coarse_gates_are_served_on_the_input_grid_and_masked_like_it(
    live: LiveServer, shared_data: Path
) -> None:
    # 791 x 718 with no data around a rotated image: sizes no stride divides.
    path = shared_data / "RGB.byte.tif"
    body = _post_image(live, path.read_bytes()).json()
    job_id = body["job_id"]
    with rasterio.open(path) as src:
        valid = src.dataset_mask() > 0
        shape = [src.height, src.width]
    gates = [a for a in body["attention"] if a["kind"] == "spatial"]
    assert [(g["name"], g.get("stride", 1)) for g in gates] == [
        ("gate_1", 1),
        ("gate_2", 2),
        ("gate_3", 4),
        ("gate_4", 8),
    ]
    for gate in gates:
        assert gate["shape"] == shape  # what is served, not what is stored
        assert "mask" not in gate
        assert 0.0 <= gate["statistics"]["min"] <= gate["statistics"]["max"] <= 1.0

    att = httpx.get(f"{live.url}/attention/{job_id}", params={"format": "geotiff"}, timeout=60)
    with _open(att.content) as out:
        bands = out.read()
    assert bands.shape == (4, *shape)
    for band in bands:
        assert np.isnan(band[~valid]).all()
        assert np.isfinite(band[valid]).all()
    one = httpx.get(f"{live.url}/attention/{job_id}/gate_4", timeout=60).json()
    values = np.array(one["values"], dtype=np.float64)  # null -> nan
    assert values.shape == tuple(shape)
    np.testing.assert_allclose(values, bands[3], atol=1e-6, equal_nan=True)


@pytest.mark.parametrize(
    ("name", "status", "words"),
    [
        ("corrupt.tif", 422, ["could not be read"]),
        ("sar_hh_complex64.tif", 422, ["dtype", "complex64"]),
        ("float_nan.tif", 422, ["band count", "3 bands"]),
    ],
)
def test_bad_shared_files_give_named_4xx(
    live: LiveServer, shared_data: Path, name: str, status: int, words: list[str]
) -> None:
    resp = _post_image(live, (shared_data / name).read_bytes())
    assert resp.status_code == status
    err = resp.json()["error"]
    for word in words:
        assert word in err["message"]
    assert "/" not in err["message"].replace("0-1", "")  # no paths leak


def _crop_request(parcels: int, dates: int, seed: int) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    start = date(2024, 3, 1)
    days = [start + timedelta(days=int(d)) for d in np.sort(rng.choice(200, dates, replace=False))]
    return {
        "model": "crops",
        "dates": [d.isoformat() for d in days],
        "parcels": [
            {"id": f"p{i}", "series": rng.uniform(200, 5000, (dates, 10)).round(1).tolist()}
            for i in range(parcels)
        ],
    }


def test_crop_parcels_json(live: LiveServer) -> None:
    req = _crop_request(3, 12, seed=1)
    resp = httpx.post(f"{live.url}/predict", json=req, timeout=30)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["dates"] == req["dates"]
    items = body["prediction"]["items"]
    assert [i["id"] for i in items] == ["p0", "p1", "p2"]
    classes = body["prediction"]["classes"]
    for item in items:
        assert item["class"] in classes
        assert sum(item["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        probs = item["probabilities"]
        assert item["class"] == max(probs, key=probs.__getitem__)
        assert item["confidence"] == probs[item["class"]]
    (att,) = body["attention"]
    assert att["kind"] == "temporal"
    assert att["dates"] == req["dates"]
    for item in att["items"]:
        weights = np.array(item["weights"])
        assert weights.shape[1] == 12
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(item["mean"], weights.mean(axis=0), atol=1e-6)
    again = httpx.get(f"{live.url}/attention/{body['job_id']}/attention").json()
    assert again["items"] == att["items"]
    # The answer is built from memory; what the store gives back later is the same.
    stored = httpx.get(f"{live.url}/jobs/{body['job_id']}").json()
    assert stored["prediction"] == body["prediction"]
    assert stored["attention"] == body["attention"]


def test_32_concurrent_clients_each_get_their_own_answer(live: LiveServer, model_dir: Path) -> None:
    crops = sorted(model_dir.glob("crops-[0-9]*.onnx"))[-1]
    session = ort.InferenceSession(str(crops), providers=["CPUExecutionProvider"])
    requests = [_crop_request(2, 10, seed=100 + i) for i in range(32)]

    def call(req: dict[str, object]) -> dict[str, object]:
        resp = httpx.post(f"{live.url}/predict", json=req, timeout=60)
        assert resp.status_code == 200, resp.text
        return resp.json()

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(call, requests))
    for req, ans in zip(requests, answers, strict=True):
        series = np.array([p["series"] for p in req["parcels"]], dtype=np.float32)  # type: ignore[index]
        dates = [date.fromisoformat(d) for d in req["dates"]]  # type: ignore[union-attr]
        days = np.array([(d - date(dates[0].year, 1, 1)).days for d in dates], np.float32)
        feed = {
            "series": series,
            "days": np.broadcast_to(days, series.shape[:2]).copy(),
            "valid": np.ones(series.shape[:2], bool),
        }
        probs, att = session.run(None, feed)
        got = np.array(
            [
                [i["probabilities"][c] for c in ans["prediction"]["classes"]]
                for i in ans["prediction"]["items"]
            ]
        )
        np.testing.assert_allclose(got, probs, atol=1e-5)
        got_att = np.array([i["weights"] for i in ans["attention"][0]["items"]])
        np.testing.assert_allclose(got_att, att, atol=1e-5)
    metrics = httpx.get(f"{live.url}/metrics").text
    ones = _sample(metrics, 'attnserve_batch_size_bucket{le="2.0",model="crops"}')
    total = _sample(metrics, 'attnserve_batch_size_count{model="crops"}')
    # Each request has 2 rows, so any batch over 2 rows joined several requests.
    assert total > ones, metrics


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"{name} not in metrics")


def test_metrics_label_routes_by_template(live: LiveServer) -> None:
    httpx.get(f"{live.url}/jobs/AAAAAAAAAAAAAAAAAAAAAAAA")
    text = httpx.get(f"{live.url}/metrics").text
    assert 'route="/jobs/{job_id}"' in text
    assert "AAAAAAAAAAAAAAAAAAAAAAAA" not in text
    for name in ("attnserve_queue_depth", "attnserve_model_loaded", "attnserve_jobs_stored"):
        assert name in text


def test_unknown_job_and_model_are_404(live: LiveServer) -> None:
    assert httpx.get(f"{live.url}/attention/AAAAAAAAAAAAAAAAAAAAAAAA").status_code == 404
    assert httpx.get(f"{live.url}/attention/..%2F..%2Fetc%2Fpasswd").status_code == 404
    resp = httpx.get(f"{live.url}/models/nosuchmodel")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"


def test_models_show_manifests(live: LiveServer) -> None:
    body = httpx.get(f"{live.url}/models").json()
    names = {m["name"] for m in body["models"]}
    assert {"footprints", "crops"} <= names
    fp = httpx.get(f"{live.url}/models/footprints").json()
    assert fp["input"]["bands"] == ["red", "green", "blue"]
    assert "gate_1" in fp["attention_layers"]
    assert fp["precision"] == "float32"
    # Two CPU instances by default on a machine with two or more cores.
    assert fp["batching"]["instances"] == (2 if usable_cpus() >= 2 else 1)
    exact = httpx.get(f"{live.url}/models/footprints:{fp['version']}").json()
    assert exact["version"] == fp["version"]
    crops = httpx.get(f"{live.url}/models/crops").json()
    assert len(crops["classes"]) >= 5


def test_a_float16_repository_serves_and_says_so(
    start_server, tmp_path: Path, model_dir: Path, shared_data: Path
) -> None:  # type: ignore[no-untyped-def]
    half = tmp_path / "fp16"
    for path in sorted(model_dir.glob("*.onnx")):
        convert_to_float16(path, half / path.name)
    server = start_server(model_dir=str(half))
    for name in ("footprints", "crops"):
        assert httpx.get(f"{server.url}/models/{name}").json()["precision"] == "float16"
    resp = _post_image(server, (shared_data / "cogeo.tif").read_bytes())
    assert resp.status_code == 200, resp.text
    assert {a["name"] for a in resp.json()["attention"]} >= {"gate_1", "band_weights"}
    resp = httpx.post(f"{server.url}/predict", json=_crop_request(3, 12, seed=1), timeout=30)
    assert resp.status_code == 200, resp.text
    for item in resp.json()["prediction"]["items"]:
        assert sum(item["probabilities"].values()) == pytest.approx(1.0, abs=1e-3)


def test_health_names_versions(live: LiveServer) -> None:
    body = httpx.get(f"{live.url}/healthz").json()
    assert body["onnxruntime"] == ort.__version__
    assert body["gdal"]
    # The CPUs thread pools are sized by, as this process sees them.
    assert body["cpus"]["usable"] == usable_cpus()
    assert body["cpus"]["affinity"] == len(os.sched_getaffinity(0))
    ready = httpx.get(f"{live.url}/readyz").json()
    assert ready["ready"] is True


def _rgb_tiff(seed: int, size: int = 64) -> bytes:
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 255, (3, size, size), dtype=np.uint8)
    return geotiff(data, transform=from_origin(500000, 4500000, 0.5, 0.5))


def test_restart_keeps_jobs_and_ttl_expires_them(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    first = start_server()
    job = _post_image(first, _rgb_tiff(1)).json()["job_id"]
    # uvicorn re-raises SIGTERM after its graceful shutdown, hence -15.
    assert first.stop() in (0, -15)
    second = start_server()
    assert httpx.get(f"{second.url}/jobs/{job}").status_code == 200
    assert httpx.get(f"{second.url}/attention/{job}").status_code == 200
    second.stop()
    short = start_server(job_ttl_s="1")
    old = _post_image(short, _rgb_tiff(2)).json()["job_id"]
    time.sleep(1.5)
    resp = httpx.get(f"{short.url}/attention/{old}")
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "not_found"


def test_queue_overflow_gives_503_with_retry_after(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server(
        batching__max_queue_size="1", batching__max_batch_size="1", batching__max_queue_delay_ms="0"
    )
    image = _rgb_tiff(3, size=512)

    def call(_: int) -> httpx.Response:
        return _post_image(server, image)

    with ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(call, range(12)))
    statuses = sorted(r.status_code for r in responses)
    assert 503 in statuses
    assert 200 in statuses
    assert set(statuses) <= {200, 503}
    for r in responses:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["code"] == "overloaded"
