"""A model's ground resolution on a live server: inputs resampled to it, answers on their grid."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.io import MemoryFile
from rasterio.transform import Affine, from_origin
from rasterio.windows import Window

from service.config import SHIPPED_MODELS
from service.runtime.manifest import MANIFEST_KEY
from tests.helpers.geotiff import geotiff, read_geotiff
from tests.helpers.jobs import download, follow, submit
from tests.helpers.server import LiveServer, serving

MODEL_GSD = 0.5
# Near Dubai, close to UTM zone 40's central meridian.
ORIGIN = (326_000.0, 2_788_000.0)
# Small enough that a 1 m image of 300 x 300 pixels is a scene on the model's grid.
MAX_SYNC = 300_000


def with_gsd(source: Path, out: Path, gsd_m: float) -> Path:
    """A copy of an ONNX model whose embedded manifest states ``input.gsd_m``."""
    model = onnx.load(str(source))
    prop = next(p for p in model.metadata_props if p.key == MANIFEST_KEY)
    data = json.loads(prop.value)
    data["input"]["gsd_m"] = gsd_m
    prop.value = json.dumps(data)
    onnx.save(model, str(out))
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A live server with the footprints model stating 0.5 m pixels."""
    tmp = tmp_path_factory.mktemp("gsd")
    models = tmp / "models"
    models.mkdir()
    source = sorted(SHIPPED_MODELS.glob("footprints-*.onnx"))[-1]
    with_gsd(source, models / source.name, MODEL_GSD)
    with serving(models, tmp, max_sync_pixels=str(MAX_SYNC)) as live:
        yield live


def _aerial(shared: Path, height: int, width: int) -> np.ndarray:
    """``(3, height, width)`` uint8 of real aerial imagery."""
    with rasterio.open(shared / "cogeo.tif") as ds:
        return np.asarray(ds.read(window=Window(300, 200, width, height)))


def _geotiff(
    data: np.ndarray,
    transform: Affine,
    crs: str | None = "EPSG:32640",
    nodata: float | None = None,
) -> bytes:
    if crs and crs.startswith("LOCAL_CS"):
        return geotiff(data, crs=CRS.from_wkt(crs), transform=transform, nodata=nodata)
    return geotiff(data, crs=crs, transform=transform, nodata=nodata)


def _post(server: LiveServer, tif: bytes, **fields: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/predict",
        data={"model": "footprints", **fields},
        files={"image": ("in.tif", tif, "image/tiff")},
        timeout=300,
    )


def _prediction(server: LiveServer, job_id: str) -> tuple[np.ndarray, dict[str, Any]]:
    resp = httpx.get(f"{server.url}/jobs/{job_id}/prediction?format=geotiff", timeout=120)
    assert resp.status_code == 200, resp.text
    with MemoryFile(resp.content) as mem, mem.open() as ds:
        return ds.read(), {"crs": ds.crs, "transform": ds.transform, "shape": ds.shape}


def test_a_finer_image_runs_at_the_model_resolution_and_answers_on_its_grid(
    server: LiveServer, shared_data: Path
) -> None:
    data = _aerial(shared_data, 192, 256)
    data[:, 20:60, 30:110] = 0  # nodata
    transform = from_origin(*ORIGIN, 0.25, 0.25)
    resp = _post(server, _geotiff(data, transform, nodata=0))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    plan = body["resampling"]
    assert plan["applied"] is True
    assert plan["model_gsd_m"] == MODEL_GSD
    assert plan["input_gsd_m"] == pytest.approx([0.25, 0.25], rel=1e-3)
    assert plan["factor"] == [0.5, 0.5]
    assert plan["model_grid"] == {"width": 128, "height": 96}
    assert plan["method"] == "average"
    # Every layer is on the input's grid; coarse gates come back at full size.
    for layer in [*body["prediction"]["layers"], *body["attention"]]:
        if layer["kind"] != "channel":
            assert layer["shape"] == [192, 256], layer
            assert "stride" not in layer
    bands, georef = _prediction(server, body["job_id"])
    assert georef["crs"] == CRS.from_epsg(32640)
    assert georef["transform"] == transform
    assert georef["shape"] == (192, 256)
    nodata = np.zeros((192, 256), bool)
    nodata[20:60, 30:110] = True
    assert np.isnan(bands[:, nodata]).all()
    assert np.isfinite(bands[:, ~nodata]).all()
    assert np.nanmin(bands) >= 0
    assert np.nanmax(bands) <= 1
    # Layers served one by one and as polygons are on the input's grid too.
    gate = httpx.get(f"{server.url}/attention/{body['job_id']}/gate_4?format=geotiff", timeout=60)
    assert gate.status_code == 200, gate.text
    with MemoryFile(gate.content) as mem, mem.open() as ds:
        assert ds.shape == (192, 256)
        assert ds.transform == transform
    geo = httpx.get(f"{server.url}/jobs/{body['job_id']}/footprints", timeout=60)
    assert geo.status_code == 200, geo.text
    assert geo.json()["type"] == "FeatureCollection"


def test_a_resolution_within_tolerance_runs_as_is(server: LiveServer, shared_data: Path) -> None:
    data = _aerial(shared_data, 64, 64)
    resp = _post(server, _geotiff(data, from_origin(*ORIGIN, 0.55, 0.55)))
    assert resp.status_code == 200, resp.text
    plan = resp.json()["resampling"]
    assert plan["applied"] is False
    assert "within 1.25x" in plan["reason"]
    assert resp.json()["prediction"]["layers"][0]["shape"] == [64, 64]


@pytest.mark.parametrize(
    ("crs", "transform"),
    [
        (None, from_origin(100, 100, 0.25, 0.25)),
        (
            'LOCAL_CS["site grid",LOCAL_DATUM["x",32767],UNIT["metre",1],'
            'AXIS["X",EAST],AXIS["Y",NORTH]]',
            from_origin(0, 0, 0.25, 0.25),
        ),
        ("EPSG:32640", Affine(1e-300, 0, ORIGIN[0], 0, -1e-300, ORIGIN[1])),
        ("EPSG:4326", Affine(1e300, 0, 0, 0, -1e300, 0)),
    ],
    ids=["no-crs", "local-cs", "tiny-pixels", "huge-pixels"],
)
def test_inputs_without_a_usable_georeference_run_as_is(
    server: LiveServer, shared_data: Path, crs: str | None, transform: Affine
) -> None:
    resp = _post(server, _geotiff(_aerial(shared_data, 48, 64), transform, crs=crs))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["resampling"]["applied"] is False
    assert body["resampling"]["reason"] == "not georeferenced: run as is"
    assert body["prediction"]["layers"][0]["shape"] == [48, 64]


def test_an_image_without_a_georeference_is_resampled_at_the_stated_resolution(
    server: LiveServer, shared_data: Path, tmp_path: Path
) -> None:
    data = _aerial(shared_data, 96, 128)
    tif = _geotiff(data, from_origin(100, 100, 1, 1), crs=None)
    resp = _post(server, tif, gsd_m="0.25")
    assert resp.status_code == 200, resp.text
    plan = resp.json()["resampling"]
    assert plan["applied"] is True
    assert plan["input_gsd_from"] == "request"
    assert plan["input_gsd_m"] == [0.25, 0.25]
    assert plan["model_grid"] == {"width": 64, "height": 48}  # the 0.5 m model's grid
    stated, georef = _prediction(server, resp.json()["job_id"])
    assert georef["shape"] == (96, 128)
    assert georef["crs"] is None
    # The same pixels with a CRS saying 0.25 m answer the same.
    same = _post(server, _geotiff(data, from_origin(*ORIGIN, 0.25, 0.25), crs="EPSG:32640"))
    measured, _ = _prediction(server, same.json()["job_id"])
    np.testing.assert_allclose(stated, measured, atol=1e-5)
    # As a scene job too: the plan travels with the job.
    job = _post(server, tif, gsd_m="0.25", **{"async": "true"})
    assert job.status_code == 202, job.text
    body, _ = follow(server, job.json()["job_id"])
    assert body["state"] == "done", body
    assert body["resampling"]["input_gsd_from"] == "request"
    pred = download(server, body["links"]["prediction_geotiff"], tmp_path / "p.tif")
    with rasterio.open(pred) as out:
        assert out.shape == (96, 128)
        # Within 1e-3, not bit for bit: a scene tile is the image reflect-padded to
        # the tile's size, the synchronous run the image alone, so the model's edge
        # pixels see other context (up to ~1.4e-4 apart in the last two columns with
        # footprints 2.2.0). A plan not applied would differ everywhere, by far more.
        np.testing.assert_allclose(out.read(1), stated[0], atol=1e-3)


def test_a_stated_resolution_does_not_override_a_georeference(
    server: LiveServer, shared_data: Path
) -> None:
    data = _aerial(shared_data, 48, 64)
    resp = _post(server, _geotiff(data, from_origin(*ORIGIN, 0.5, 0.5)), gsd_m="0.1")
    assert resp.status_code == 200, resp.text
    plan = resp.json()["resampling"]
    assert plan["applied"] is False
    assert plan["input_gsd_m"] == pytest.approx([0.5, 0.5], rel=1e-3)  # measured
    assert "input_gsd_from" not in plan


@pytest.mark.parametrize("value", ["-1", "0", "nan", "abc", "1e9"])
def test_a_bad_stated_resolution_is_refused(
    server: LiveServer, shared_data: Path, value: str
) -> None:
    data = _aerial(shared_data, 48, 64)
    resp = _post(server, _geotiff(data, from_origin(100, 100, 1, 1), crs=None), gsd_m=value)
    assert resp.status_code == 422, resp.text
    assert "gsd_m must be" in resp.json()["error"]["message"]


def test_degrees_are_measured_in_metres(server: LiveServer, shared_data: Path) -> None:
    # 2.5e-6 degrees at 25 N: 0.25 m along a row, 0.28 m down a column.
    deg = 2.5e-6
    data = _aerial(shared_data, 96, 128)
    resp = _post(server, _geotiff(data, from_origin(55.3, 25.2, deg, deg), crs="EPSG:4326"))
    assert resp.status_code == 200, resp.text
    plan = resp.json()["resampling"]
    assert plan["applied"] is True
    assert plan["input_gsd_m"] == pytest.approx([0.2524, 0.2769], rel=5e-3)
    assert plan["model_grid"] == {"width": 65, "height": 53}
    _, georef = _prediction(server, resp.json()["job_id"])
    assert georef["shape"] == (96, 128)
    assert georef["crs"] == CRS.from_epsg(4326)


def test_an_image_far_coarser_than_the_model_runs_as_sent_with_a_warning(
    server: LiveServer, shared_data: Path
) -> None:
    # A 300 m Landsat scene would become about 475,000 pixels a side at 0.5 m.
    resp = _post(server, (shared_data / "RGB.byte.tif").read_bytes())
    assert resp.status_code in (200, 202), resp.text  # 202: over this server's sync limit
    resampling = resp.json()["resampling"]
    assert resampling["applied"] is False
    assert "more than the 8x the server resamples" in resampling["reason"]
    assert resp.json()["georeference"]["width"] == 791


def test_a_coarser_image_over_the_sync_limit_on_the_model_grid_is_a_scene(
    server: LiveServer, shared_data: Path, tmp_path: Path
) -> None:
    # 300 x 300 at 1 m: under the synchronous limit as sent, 600 x 600 on the model's grid.
    data = _aerial(shared_data, 300, 300)
    data[:, 250:, :40] = 0
    transform = from_origin(*ORIGIN, 1.0, 1.0)
    path = tmp_path / "coarse.tif"
    path.write_bytes(_geotiff(data, transform, nodata=0))
    resp = _post(server, path.read_bytes())
    assert resp.status_code == 202, resp.text
    assert resp.json()["resampling"]["model_grid"] == {"width": 600, "height": 600}
    body, _ = follow(server, resp.json()["job_id"])
    assert body["state"] == "done", body
    assert body["resampling"]["applied"] is True
    pred = download(server, body["links"]["prediction_geotiff"], tmp_path / "p.tif")
    with rasterio.open(pred) as out:
        assert out.crs == CRS.from_epsg(32640)
        assert out.transform == transform
        assert out.shape == (300, 300)
        values = out.read(1)
    assert np.isnan(values[250:, :40]).all()
    assert np.isfinite(values[:250]).all()


def test_a_scene_gives_the_synchronous_answer(
    server: LiveServer, shared_data: Path, tmp_path: Path
) -> None:
    # 256 x 256 on the model's grid: tiles and their context windows fall on
    # multiples of the model's size multiple, as the whole image's pooling does.
    data = _aerial(shared_data, 512, 512)
    data[:, 100:140, 400:] = 0
    path = tmp_path / "fine.tif"
    path.write_bytes(_geotiff(data, from_origin(*ORIGIN, 0.25, 0.25), nodata=0))
    sync = _post(server, path.read_bytes(), format="geotiff")
    assert sync.status_code == 200, sync.text
    reference = read_geotiff(sync.content)  # probability, then each gate
    job = submit(
        server, [path], model="footprints", tile_size="64", overlap="16", **{"async": "true"}
    )
    body, _ = follow(server, job["job_id"])
    assert body["state"] == "done", body
    assert body["progress"]["total"] > 1
    assert body["resampling"]["model_grid"] == {"width": 256, "height": 256}
    pred = download(server, body["links"]["prediction_geotiff"], tmp_path / "p.tif")
    att = download(server, body["links"]["attention_geotiff"], tmp_path / "a.tif")
    with rasterio.open(pred) as p, rasterio.open(att) as a:
        tiled = np.concatenate([p.read(), a.read()])
    assert tiled.shape == reference.shape
    np.testing.assert_array_equal(np.isnan(tiled), np.isnan(reference))
    diff = np.nan_to_num(np.abs(tiled - reference)).reshape(len(tiled), -1).max(axis=1)
    # The bound of tiled against whole-image inference without resampling (test_seams_live).
    assert (diff <= 0.05).all(), dict(enumerate(diff.round(4)))
