"""The Open Inference Protocol (KServe v2) routes, driven by the official tritonclient.

tritonclient is an independent implementation of the protocol: if it can read
our metadata and run our models in JSON and binary modes, so can KServe's and
Triton's other clients. Its outputs must equal what ``/predict`` gives for the
same input.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import date
from pathlib import Path

import httpx
import numpy as np
import pytest
from rasterio.io import MemoryFile

from service.runtime.segmentation import upsample
from tests.helpers.bodies import parcels, upload
from tests.helpers.geotiff import window_geotiff
from tests.helpers.server import LiveServer

httpclient = pytest.importorskip(
    "tritonclient.http", reason="needs tritonclient[http] (pip install 'tritonclient[http]')"
)
from tritonclient.utils import InferenceServerException  # noqa: E402

ATOL = 1e-5
KEY = "v2-protocol-test-key-0123456789"
MODES = [pytest.param(False, id="json"), pytest.param(True, id="binary")]


@pytest.fixture(scope="module")
def triton(live: LiveServer) -> object:
    """A tritonclient HTTP client for the live server."""
    client = httpclient.InferenceServerClient(
        url=live.url.removeprefix("http://"), connection_timeout=120, network_timeout=300
    )
    yield client
    client.close()


def _predict_tiff(live: LiveServer, data: bytes) -> tuple[np.ndarray, list[str], str]:
    resp = httpx.post(f"{live.url}/predict", **upload(data, format="geotiff"), timeout=300)
    assert resp.status_code == 200, resp.text
    with MemoryFile(resp.content) as mem, mem.open() as src:
        return src.read(), list(src.descriptions), resp.headers["X-Job-Id"]


def test_server_and_model_metadata(triton: object) -> None:
    assert triton.is_server_live()
    assert triton.is_server_ready()
    server = triton.get_server_metadata()
    assert server["name"] == "attnserve"
    assert "binary_tensor_data" in server["extensions"]

    foot = triton.get_model_metadata("footprints")
    assert foot["inputs"] == [
        {"name": "image", "datatype": "FP32", "shape": [-1, 3, -1, -1]},
        # Optional: the server fills it with the image's own band means.
        {"name": "band_mean", "datatype": "FP32", "shape": [-1, 3]},
    ]
    outputs = {o["name"]: o for o in foot["outputs"]}
    assert outputs["probability"]["shape"] == [-1, 1, -1, -1]
    assert {"gate_1", "band_weights"} <= set(outputs)
    assert outputs["band_weights"]["shape"] == [-1, 3]
    assert triton.is_model_ready("footprints")
    version = foot["versions"][-1]
    assert triton.get_model_metadata("footprints", version)["name"] == "footprints"
    assert triton.is_model_ready("footprints", version)

    crops = triton.get_model_metadata("crops")
    types = {i["name"]: (i["datatype"], i["shape"]) for i in crops["inputs"]}
    assert types == {
        "series": ("FP32", [-1, -1, 10]),
        "days": ("FP32", [-1, -1]),
        "valid": ("BOOL", [-1, -1]),
    }
    assert {o["name"] for o in crops["outputs"]} == {"probabilities", "attention"}


@pytest.mark.parametrize("binary", MODES)
def test_footprints_infer_equals_predict(
    live: LiveServer, triton: object, shared_data: Path, binary: bool
) -> None:
    # JSON tensors of a whole megapixel scene would be ~100 MB of text.
    size = 1024 if binary else 128
    tiff, pixels = window_geotiff(shared_data / "cogeo.tif", size)
    bands, descriptions, job_id = _predict_tiff(live, tiff)

    image = httpclient.InferInput("image", [1, 3, size, size], "FP32")
    image.set_data_from_numpy(pixels[None].astype(np.float32), binary_data=binary)
    names = ["probability", "gate_1", "gate_2", "gate_3", "gate_4", "band_weights"]
    wanted = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]
    result = triton.infer("footprints", [image], outputs=wanted)

    body = result.get_response()
    assert body["model_name"] == "footprints"
    for out in body["outputs"]:
        assert ("parameters" in out and "binary_data_size" in out["parameters"]) == binary
    strides = [1, 1, 2, 4, 8]  # the raw tensors keep each gate at its own resolution
    for i, (name, stride) in enumerate(zip(names[:-1], strides, strict=True)):
        assert descriptions[i].startswith(name)
        got = result.as_numpy(name)
        assert got.shape == (1, 1, size // stride, size // stride)
        served = upsample(got[0, 0], stride, size, size)
        np.testing.assert_allclose(served, bands[i], atol=ATOL, rtol=0)
    weights = httpx.get(f"{live.url}/attention/{job_id}/band_weights", timeout=30).json()
    np.testing.assert_allclose(
        result.as_numpy("band_weights")[0], weights["values"], atol=ATOL, rtol=0
    )


def _crop_request() -> tuple[dict[str, object], np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    dates = [date(2024, 3, 2), date(2024, 4, 8), date(2024, 5, 20), date(2024, 7, 1)]
    series = rng.uniform(200, 4000, size=(3, len(dates), 10)).astype(np.float32).round()
    valid = np.ones((3, len(dates)), dtype=bool)
    valid[1, 2] = False
    days = np.array([(d - date(2024, 1, 1)).days for d in dates], dtype=np.float32)
    body = parcels(series, valid, dates=[d.isoformat() for d in dates])
    return body, series, np.tile(days, (3, 1)), valid


def _crop_inputs(
    series: np.ndarray, days: np.ndarray, valid: np.ndarray, binary: bool = True
) -> list[object]:
    """The crops model's three inputs as tritonclient tensors, binary or JSON."""
    inputs = []
    for name, array, datatype in (
        ("series", series, "FP32"),
        ("days", days, "FP32"),
        ("valid", valid, "BOOL"),
    ):
        tensor = httpclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array, binary_data=binary)
        inputs.append(tensor)
    return inputs


@pytest.mark.parametrize("binary", MODES)
def test_crops_infer_equals_predict(live: LiveServer, triton: object, binary: bool) -> None:
    body, series, days, valid = _crop_request()
    resp = httpx.post(f"{live.url}/predict", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    classes = answer["prediction"]["classes"]
    probs = np.array(
        [[item["probabilities"][c] for c in classes] for item in answer["prediction"]["items"]]
    )
    attention = np.array([item["weights"] for item in answer["attention"][0]["items"]])

    inputs = _crop_inputs(series, days, valid, binary)
    wanted = [
        httpclient.InferRequestedOutput(n, binary_data=binary)
        for n in ("probabilities", "attention")
    ]
    result = triton.infer("crops", inputs, outputs=wanted, request_id="req-1")
    assert result.get_response()["id"] == "req-1"
    np.testing.assert_allclose(result.as_numpy("probabilities"), probs, atol=ATOL, rtol=0)
    got = result.as_numpy("attention")
    assert got.shape == attention.shape
    np.testing.assert_allclose(got, attention, atol=ATOL, rtol=0)
    # A date marked invalid gets no attention, here as in /predict.
    assert np.all(got[1, :, 2] == 0)


def test_all_outputs_come_back_binary_when_none_are_named(triton: object) -> None:
    _, series, days, valid = _crop_request()
    inputs = _crop_inputs(series, days, valid)
    result = triton.infer("crops", inputs)
    probs = result.as_numpy("probabilities")
    assert probs.shape[0] == 3
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert result.as_numpy("attention").shape[::2] == (3, 4)


def _zeros_image(shape: list[int], datatype: str, dtype: type) -> object:
    """An ``image`` input of zeros as a tritonclient tensor."""
    tensor = httpclient.InferInput("image", shape, datatype)
    tensor.set_data_from_numpy(np.zeros(shape, dtype=dtype))
    return tensor


def test_bad_tensors_are_4xx_errors_tritonclient_can_read(triton: object) -> None:
    wrong_type = _zeros_image([1, 3, 32, 32], "FP64", np.float64)
    with pytest.raises(InferenceServerException) as info:
        triton.infer("footprints", [wrong_type])
    assert info.value.status() == "422"
    assert "datatype FP64 given, model takes FP32" in info.value.message()

    odd = _zeros_image([1, 3, 30, 32], "FP32", np.float32)
    with pytest.raises(InferenceServerException) as info:
        triton.infer("footprints", [odd])
    assert info.value.status() == "422"
    assert "height must be a multiple of 16" in info.value.message()

    with pytest.raises(InferenceServerException) as info:
        triton.get_model_metadata("roads")
    assert info.value.status() == "404"
    assert "no model named 'roads'" in info.value.message()


def test_binary_sizes_and_shapes_are_checked(live: LiveServer) -> None:
    url = f"{live.url}/v2/models/footprints/infer"
    header = (
        b'{"inputs":[{"name":"image","shape":[1,3,16,16],"datatype":"FP32",'
        b'"parameters":{"binary_data_size":3072}}]}'
    )
    short = header + np.zeros(3 * 16 * 16 - 1, dtype=np.float32).tobytes()
    resp = httpx.post(
        url, content=short, headers={"Inference-Header-Content-Length": str(len(header))}
    )
    assert resp.status_code == 422
    assert resp.json()["code"] == "invalid_input"
    assert "exceeds the body" in resp.json()["error"]

    resp = httpx.post(url, content=header, headers={"Inference-Header-Content-Length": "99999"})
    assert resp.status_code == 422
    assert isinstance(resp.json()["error"], str)

    wrong_count = {
        "inputs": [{"name": "image", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [1.0]}]
    }
    resp = httpx.post(url, json=wrong_count)
    assert resp.status_code == 422
    assert "1 values given, the shape needs 768" in resp.json()["error"]

    missing = {
        "inputs": [{"name": "series", "shape": [1, 2, 10], "datatype": "FP32", "data": [1.0] * 20}]
    }
    resp = httpx.post(f"{live.url}/v2/models/crops/infer", json=missing)
    assert resp.status_code == 422
    assert "also needs input(s) days, valid" in resp.json()["error"]

    dates_disagree = {
        "inputs": [
            {"name": "series", "shape": [1, 2, 10], "datatype": "FP32", "data": [1.0] * 20},
            {"name": "days", "shape": [1, 3], "datatype": "FP32", "data": [1.0, 2.0, 3.0]},
            {"name": "valid", "shape": [1, 2], "datatype": "BOOL", "data": [True, True]},
        ]
    }
    resp = httpx.post(f"{live.url}/v2/models/crops/infer", json=dates_disagree)
    assert resp.status_code == 422
    assert "dates is 3 here but 2 in input 'series'" in resp.json()["error"]


def test_gzip_requests_are_inflated(live: LiveServer) -> None:
    import gzip

    payload = {
        "inputs": [
            {"name": "series", "shape": [1, 2, 10], "datatype": "FP32", "data": [900.0] * 20},
            {"name": "days", "shape": [1, 2], "datatype": "FP32", "data": [60.0, 90.0]},
            {"name": "valid", "shape": [1, 2], "datatype": "BOOL", "data": [True, True]},
        ]
    }
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb") as gz:
        gz.write(httpx.Request("POST", "/", json=payload).content)
    resp = httpx.post(
        f"{live.url}/v2/models/crops/infer",
        content=raw.getvalue(),
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert resp.status_code == 200, resp.text
    assert sum(resp.json()["outputs"][0]["data"]) == pytest.approx(1.0, abs=1e-5)


def test_v2_inference_goes_through_the_batcher_metrics(live: LiveServer, triton: object) -> None:
    before = httpx.get(f"{live.url}/metrics").text
    tensor = httpclient.InferInput("image", [2, 3, 32, 32], "FP32")
    tensor.set_data_from_numpy(np.full((2, 3, 32, 32), 100.0, dtype=np.float32))
    result = triton.infer("footprints", [tensor])
    assert result.as_numpy("probability").shape == (2, 1, 32, 32)
    after = httpx.get(f"{live.url}/metrics").text
    route = 'route="/v2/models/{name}/infer"'
    assert route in after
    assert _batch_rows(after) >= _batch_rows(before) + 2


def _batch_rows(metrics: str) -> float:
    # The batcher's row histogram: its _sum counts every row it ran.
    total = 0.0
    for line in metrics.splitlines():
        if line.startswith("attnserve_batch_size_sum") and 'model="footprints' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_api_keys_apply_and_refusals_keep_the_protocol_shape(
    start_server: Callable[..., LiveServer],
) -> None:
    server = start_server(api_keys=json.dumps([KEY]))
    host = server.url.removeprefix("http://")
    anonymous = httpclient.InferenceServerClient(url=host)
    with pytest.raises(InferenceServerException) as info:
        anonymous.get_model_metadata("crops")
    assert info.value.status() == "401"
    assert "API key" in info.value.message()
    anonymous.close()
    keyed = httpclient.InferenceServerClient(url=host)
    meta = keyed.get_model_metadata("crops", headers={"Authorization": f"Bearer {KEY}"})
    assert meta["name"] == "crops"
    keyed.close()
