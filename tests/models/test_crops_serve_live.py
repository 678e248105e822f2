"""Crop models of different band sets served side by side by a real server over HTTP:
the shipped Sentinel-2 demo and Mato Grosso MODIS models, and an NDVI-only model
trained here with `attnserve train crops --data`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from models.data.crop_npz import read_crop_npz
from models.data.crops import BANDS, make_crop_series
from service.cli import main
from service.config import SHIPPED_MODELS
from tests.helpers.server import LiveServer, start
from tests.models.test_train_crops_bands import MATO_GROSSO, write_ndvi_only

MODIS_BANDS = ["MIR", "BLUE", "NIR", "RED", "EVI", "NDVI"]


def _serve(model_dir: Path, tmp: Path) -> LiveServer:
    return start(model_dir, tmp)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = _serve(Path(SHIPPED_MODELS), tmp_path_factory.mktemp("shipped"))
    yield server
    server.stop()


def _parcels(series: np.ndarray, valid: np.ndarray | None = None) -> list[dict[str, object]]:
    return [
        {
            "id": f"p{i}",
            "series": s.tolist(),
            **({} if valid is None else {"valid": valid[i].tolist()}),
        }
        for i, s in enumerate(series)
    ]


def test_models_lists_both_crop_models_with_their_own_bands(shipped: LiveServer) -> None:
    resp = httpx.get(f"{shipped.url}/models", timeout=30)
    assert resp.status_code == 200, resp.text
    text = resp.text
    detail = {
        name: httpx.get(f"{shipped.url}/models/{name}", timeout=30).json()
        for name in ("crops", "crops-mato-grosso")
    }
    assert "crops-mato-grosso" in text
    assert detail["crops"]["input"]["bands"] == list(BANDS)
    assert detail["crops-mato-grosso"]["input"]["bands"] == MODIS_BANDS
    assert detail["crops-mato-grosso"]["classes"][0] == "Cerrado"
    assert detail["crops-mato-grosso"]["metrics"]["macro_f1"] > 0


def test_six_band_series_to_mato_grosso_and_ten_band_series_to_crops(
    shipped: LiveServer,
) -> None:
    data = read_crop_npz(MATO_GROSSO)
    pick = np.array([0, 400, 900, 1500])
    series, days = data.series[pick], data.days[0]
    resp = httpx.post(
        f"{shipped.url}/predict",
        json={
            "model": "crops-mato-grosso",
            "days": days.tolist(),
            "parcels": _parcels(series),
        },
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"]["name"] == "crops-mato-grosso"
    items = body["prediction"]["items"]
    # The server answers what the model file itself gives for these series.
    session = ort.InferenceSession(
        str(Path(SHIPPED_MODELS) / "crops-mato-grosso-1.0.0.onnx"),
        providers=["CPUExecutionProvider"],
    )
    probs, attention = session.run(
        None,
        {
            "series": series,
            "days": np.broadcast_to(days, series.shape[:2]).astype(np.float32),
            "valid": np.ones(series.shape[:2], dtype=bool),
        },
    )
    classes = body["prediction"]["classes"]
    assert [i["class"] for i in items] == [classes[k] for k in probs.argmax(1)]
    weights = np.array([i["weights"] for i in body["attention"][0]["items"]])
    assert weights.shape == (4, 8, 23)
    np.testing.assert_allclose(weights, attention, atol=1e-5)

    s2 = make_crop_series(3, seed=11, min_dates=15, max_dates=15, cloud_probability=0)
    resp = httpx.post(
        f"{shipped.url}/predict",
        json={"model": "crops", "days": s2.days[0].tolist(), "parcels": _parcels(s2.series)},
        timeout=60,
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["model"]["name"] == "crops"
    assert len(resp.json()["prediction"]["items"]) == 3


def test_a_series_of_the_other_band_set_is_a_clear_422(shipped: LiveServer) -> None:
    data = read_crop_npz(MATO_GROSSO)
    resp = httpx.post(
        f"{shipped.url}/predict",
        json={
            "model": "crops",
            "days": data.days[0].tolist(),
            "parcels": _parcels(data.series[:2]),
        },
        timeout=60,
    )
    assert resp.status_code == 422, resp.text
    message = resp.json()["error"]["message"]
    assert "10 bands" in message
    assert "B2" in message


def test_an_ndvi_only_model_trained_from_data_serves_over_http(tmp_path: Path) -> None:
    ndvi = write_ndvi_only(read_crop_npz(MATO_GROSSO), tmp_path / "ndvi.npz")
    out = tmp_path / "run"
    args = ["train", "crops", "--tiny", "--data", str(tmp_path / "ndvi.npz"), "--out", str(out)]
    assert main([*args, "--threads", "1", "--name", "crops-ndvi"]) == 0
    models = tmp_path / "models"
    assert main(["export", str(out / "crops.pt"), "--out", str(models / "crops-ndvi.onnx")]) == 0
    server = _serve(models, tmp_path)
    try:
        detail = httpx.get(f"{server.url}/models/crops-ndvi", timeout=30).json()
        assert detail["input"]["bands"] == ["NDVI"]
        # Uneven series: each parcel's padding is marked invalid.
        resp = httpx.post(
            f"{server.url}/predict",
            json={
                "model": "crops-ndvi",
                "days": ndvi.days[0].tolist(),
                "parcels": _parcels(np.nan_to_num(ndvi.series[:5]), ndvi.valid[:5]),
            },
            timeout=60,
        )
        assert resp.status_code == 200, resp.text
        items = resp.json()["attention"][0]["items"]
        for item, valid in zip(items, ndvi.valid[:5], strict=True):
            weights = np.array(item["weights"])
            assert weights.shape == (2, 23)  # --tiny: 2 heads
            assert np.all(weights[:, ~valid] == 0)
            np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-5)
    finally:
        server.stop()
