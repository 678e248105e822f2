"""Maps over HTTP on a live server with API keys: tiles, TileJSON, WMTS (read by GDAL), owners."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import rasterio
import rasterio.warp

from tests.helpers.bodies import upload
from tests.helpers.geotiff import ORIGIN, UTM, geotiff, noise
from tests.helpers.jobs import follow, submit
from tests.helpers.scenes import dated_stack
from tests.helpers.server import LiveServer
from tests.helpers.tiles import rgba, tile_at, tile_bounds
from tests.service.api.routes.conftest import OTHER_KEY as OTHER
from tests.service.api.routes.conftest import OWNER_KEY as KEY

SIDE = 600
NS = {"w": "http://www.opengis.net/wmts/1.0", "ows": "http://www.opengis.net/ows/1.1"}


@pytest.fixture(scope="module")
def scene(owner: httpx.Client) -> dict[str, Any]:
    """A footprints scene job (COG outputs) of a 600 x 600 image at 0.5 m."""
    made = owner.post(
        "/predict", timeout=120, **upload(geotiff(noise(3, SIDE)), **{"async": "true"})
    )
    assert made.status_code == 202, made.text
    job_id = made.json()["job_id"]
    deadline = time.monotonic() + 300
    while (body := owner.get(f"/jobs/{job_id}").json())["state"] not in ("done", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert body["state"] == "done", body
    return dict(body)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _centre(owner: httpx.Client, job_id: str, layer: str) -> tuple[dict[str, Any], tuple[int, ...]]:
    tilejson = owner.get(f"/jobs/{job_id}/tilejson/{layer}.json")
    assert tilejson.status_code == 200, tilejson.text
    body = tilejson.json()
    west, south, east, north = body["bounds"]
    return body, tile_at((west + east) / 2, (south + north) / 2, body["maxzoom"])


def test_a_scene_tile_is_its_cog_warped_to_web_mercator(
    owner: httpx.Client, scene: dict[str, Any], tmp_path: Path
) -> None:
    job_id = scene["job_id"]
    cog = tmp_path / "prediction.tif"
    cog.write_bytes(owner.get(f"/jobs/{job_id}/files/prediction.tif", timeout=60).content)
    _, tile = _centre(owner, job_id, "probability")
    answer = owner.get(f"/jobs/{job_id}/tiles/probability/{'/'.join(map(str, tile))}.png")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/png"
    assert "immutable" in answer.headers["cache-control"]
    got = rgba(answer.content)
    want = np.full((256, 256), np.nan, np.float32)
    with rasterio.open(cog) as ds:
        rasterio.warp.reproject(
            rasterio.band(ds, 1),
            want,
            dst_transform=rasterio.transform.from_bounds(*tile_bounds(*tile), 256, 256),
            dst_crs="EPSG:3857",
            dst_nodata=np.nan,
            resampling=rasterio.warp.Resampling.nearest,
        )
    valid = np.isfinite(want)
    assert valid.mean() > 0.2
    assert (got[3] == np.where(valid, 255, 0)).mean() > 0.98
    # The colour map's 256 steps over 0-1, and viridis is monotonic in lightness:
    # one step of rounding apart at most, a few pixels along GDAL's pixel edges aside.
    shown = valid & (got[3] == 255)
    lut = _viridis()
    index = np.abs(got[:3, shown].T[:, None, :].astype(int) - lut[None]).sum(axis=2).argmin(axis=1)
    step = np.abs(index - np.clip(want[shown] * 255 + 0.5, 0, 255).astype(int))
    assert (step <= 1).mean() > 0.97


def _viridis() -> np.ndarray:
    from rio_tiler.colormap import cmap

    colours = cmap.get("viridis")
    return np.array([colours[i][:3] for i in range(256)], dtype=int)


def test_tiles_off_the_data_are_transparent(owner: httpx.Client, scene: dict[str, Any]) -> None:
    job_id = scene["job_id"]
    _, (z, x, y) = _centre(owner, job_id, "gate_1")
    for path in (f"{z}/{x + 40}/{y}.png", f"{z}/{x}/{y + 40}.webp", f"{z - 9}/{x >> 9}/{0}.png"):
        answer = owner.get(f"/jobs/{job_id}/tiles/gate_1/{path}")
        assert answer.status_code == 200, path
        assert not rgba(answer.content)[3].any(), path


def test_a_scene_jobs_input_is_a_base_layer_in_colour(
    owner: httpx.Client, scene: dict[str, Any]
) -> None:
    job_id = scene["job_id"]
    listing = owner.get(f"/jobs/{job_id}/tiles").json()["layers"]
    assert listing[-1]["name"] == "input"
    assert listing[-1]["legend"]["type"] == "image"
    _, (z, x, y) = _centre(owner, job_id, "input")
    pixels = rgba(owner.get(f"/jobs/{job_id}/tiles/input/{z}/{x}/{y}.png").content)
    shown = pixels[3] == 255
    assert shown.mean() > 0.2
    # The noise image's three bands, each stretched over its own range: colours vary.
    assert len({tuple(p) for p in pixels[:3, shown].T.tolist()}) > 1000
    assert not rgba(owner.get(f"/jobs/{job_id}/tiles/input/{z}/{x + 40}/{y}.png").content)[3].any()


def test_tilejson_bounds_are_the_inputs_bounds_in_wgs84(
    owner: httpx.Client, scene: dict[str, Any]
) -> None:
    body, _ = _centre(owner, scene["job_id"], "probability")
    left, top = ORIGIN.c, ORIGIN.f
    want = rasterio.warp.transform_bounds(
        UTM, "EPSG:4326", left, top - SIDE * 0.5, left + SIDE * 0.5, top, densify_pts=21
    )
    np.testing.assert_allclose(body["bounds"], want, rtol=0, atol=1e-9)
    assert body["tiles"][0].endswith(
        f"/jobs/{scene['job_id']}/tiles/probability/{{z}}/{{x}}/{{y}}.png"
    )


def test_the_wmts_layer_opens_with_gdal(
    keyed_server: LiveServer, owner: httpx.Client, scene: dict[str, Any]
) -> None:
    url = f"{keyed_server.url}/jobs/{scene['job_id']}/WMTSCapabilities.xml"
    document = owner.get(url)
    assert document.status_code == 200
    root = ET.fromstring(document.content)
    names = [e.text for e in root.findall("w:Contents/w:Layer/ows:Identifier", NS)]
    assert names == ["probability", "gate_1", "gate_2", "gate_3", "gate_4", "input"]
    # GDAL in a process of its own: in-process app tests leave GDAL_SKIP set here.
    script = (
        "import sys, rasterio\n"
        f"with rasterio.Env(GDAL_HTTP_HEADERS='Authorization: Bearer {KEY}'):\n"
        "    with rasterio.open('WMTS:' + sys.argv[1] + ',layer=probability') as ds:\n"
        "        w = rasterio.windows.Window(ds.width // 2 - 32, ds.height // 2 - 32, 64, 64)\n"
        "        alpha = ds.read(4, window=w)\n"
        "        print(ds.driver, ds.crs.to_epsg(), ds.count, int((alpha == 255).sum()))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "GDAL_SKIP"}
    ran = subprocess.run(
        [sys.executable, "-c", script, url], env=env, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr
    driver, epsg, count, opaque = ran.stdout.split()
    assert (driver, epsg, count) == ("WMTS", "3857", "4")
    assert int(opaque) == 64 * 64  # the middle of the job is data


def test_another_keys_maps_are_404(keyed_server: LiveServer, scene: dict[str, Any]) -> None:
    job_id = scene["job_id"]
    paths = [
        f"/jobs/{job_id}/tiles",
        f"/jobs/{job_id}/tiles/probability/18/0/0.png",
        f"/jobs/{job_id}/tilejson/probability.json",
        f"/jobs/{job_id}/WMTSCapabilities.xml",
        f"/jobs/{job_id}/point?row=0&col=0",
    ]
    for path in paths:
        other = httpx.get(keyed_server.url + path, headers={"Authorization": f"Bearer {OTHER}"})
        assert other.status_code == 404, path
        assert other.json()["error"]["code"] == "not_found"
        assert httpx.get(keyed_server.url + path).status_code == 401, path


def test_a_synchronous_jobs_layers_are_tiled_too(owner: httpx.Client) -> None:
    made = owner.post("/predict", **upload(geotiff(noise(3, 256, seed=3))))
    assert made.status_code == 200, made.text
    job_id = made.json()["job_id"]
    listing = owner.get(f"/jobs/{job_id}/tiles").json()
    names = [la["name"] for la in listing["layers"]]
    assert names == ["probability", "gate_1", "gate_2", "gate_3", "gate_4"]
    for layer in ("probability", "gate_4"):
        _, tile = _centre(owner, job_id, layer)
        answer = owner.get(f"/jobs/{job_id}/tiles/{layer}/{'/'.join(map(str, tile))}.webp")
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "image/webp"
        assert (rgba(answer.content)[3] == 255).any()
    preview = owner.get(f"/jobs/{job_id}/preview/probability.png")
    assert preview.status_code == 200
    assert rgba(preview.content).shape == (4, 256, 256)  # the job's own grid, whole
    bad = owner.get(f"/jobs/{job_id}/tiles/probability/99/0/0.png")
    assert bad.status_code == 422
    assert "zoom" in bad.json()["error"]["message"]
    assert owner.get(f"/jobs/{job_id}/tiles/channel/1/0/0.png").status_code == 404


def test_jobs_in_an_object_store_are_tiled_through_the_store(
    start_server: Callable[..., LiveServer], s3_store_url: str, tmp_path: Path
) -> None:
    server = start_server(job_store=s3_store_url, job_dir=str(tmp_path / "work"))
    scene = _write(tmp_path / "scene.tif", geotiff(noise(3, SIDE)))
    job = submit(server, [scene], model="footprints", **{"async": "true"})
    body, _ = follow(server, job["job_id"])
    assert body["state"] == "done", body
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for job_id in (
            job["job_id"],
            client.post("/predict", **upload(geotiff(noise(3, 64)))).json()["job_id"],
        ):
            _, tile = _centre(client, job_id, "probability")
            answer = client.get(f"/jobs/{job_id}/tiles/probability/{'/'.join(map(str, tile))}.png")
            assert answer.status_code == 200, answer.text
            assert (rgba(answer.content)[3] == 255).any()


def _pixel_lonlat(georef: dict[str, Any], row: int, col: int) -> tuple[float, float]:
    x, y = rasterio.transform.Affine(*georef["transform"][:6]) * (col + 0.5, row + 0.5)
    lons, lats = rasterio.warp.transform(georef["crs"], "EPSG:4326", [x], [y])
    return lons[0], lats[0]


def test_a_point_query_reads_every_layer_at_that_pixel(
    owner: httpx.Client, scene: dict[str, Any], tmp_path: Path
) -> None:
    job_id = scene["job_id"]
    row, col = 123, 456
    lon, lat = _pixel_lonlat(scene["georeference"], row, col)
    answer = owner.get(f"/jobs/{job_id}/point", params={"lon": lon, "lat": lat})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["row"], body["col"]) == (row, col)
    values = {la["name"]: la for la in body["layers"]}
    assert set(values) == {"probability", "gate_1", "gate_2", "gate_3", "gate_4"}
    cog = _write(tmp_path / "p.tif", owner.get(f"/jobs/{job_id}/files/prediction.tif").content)
    with rasterio.open(cog) as ds:
        stored = ds.read(1, window=rasterio.windows.Window(col, row, 1, 1))[0, 0]
        scale = 255.0 if ds.dtypes[0] == "uint8" else 1.0
    assert values["probability"]["value"] == pytest.approx(stored / scale, abs=1e-6)
    by_pixel = owner.get(f"/jobs/{job_id}/point", params={"row": row, "col": col}).json()
    assert by_pixel["layers"] == body["layers"]


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"lon": 0.0, "lat": 0.0}, "off the job's raster"),
        ({"row": 0, "col": SIDE}, "off the raster"),
        ({"lon": 2.0}, "either lon and lat"),
        ({"lon": 2.0, "lat": 1.0, "row": 3, "col": 4}, "either lon and lat"),
        ({"lon": 200.0, "lat": 1.0}, "lon"),
    ],
)
def test_a_point_off_the_data_is_a_clear_422(
    owner: httpx.Client, scene: dict[str, Any], params: dict[str, float], words: str
) -> None:
    answer = owner.get(f"/jobs/{scene['job_id']}/point", params=params)
    assert answer.status_code == 422, answer.text
    assert words in answer.json()["error"]["message"]


@pytest.fixture(scope="module")
def crop_scene(owner: httpx.Client, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A crops scene job of three dated 10-band Sentinel-2-like images, 48 x 48."""
    dates = ["2024-04-01", "2024-06-01", "2024-08-01"]
    paths = dated_stack(tmp_path_factory.mktemp("crop-scene"), 48, dates, seed=4)
    files = [("image", (p.name, p.read_bytes(), "image/tiff")) for p in paths]
    fields = {"model": "crops", "dates": ",".join(dates), "async": "true"}
    made = owner.post("/predict", data=fields, files=files, timeout=120)
    assert made.status_code == 202, made.text
    deadline = time.monotonic() + 300
    while (body := owner.get(f"/jobs/{made.json()['job_id']}").json())["state"] not in (
        "done",
        "failed",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert body["state"] == "done", body
    body["paths"] = paths
    return dict(body)


def test_a_crop_scenes_point_has_attention_per_date(
    owner: httpx.Client, crop_scene: dict[str, Any], tmp_path: Path
) -> None:
    job_id = crop_scene["job_id"]
    answer = owner.get(f"/jobs/{job_id}/point", params={"row": 20, "col": 30}).json()
    layers = {la["name"]: la for la in answer["layers"]}
    attention = layers["attention"]
    assert attention["dates"] == ["2024-04-01", "2024-06-01", "2024-08-01"]
    cog = _write(tmp_path / "a.tif", owner.get(f"/jobs/{job_id}/files/attention.tif").content)
    with rasterio.open(cog) as ds:
        stored = ds.read(window=rasterio.windows.Window(30, 20, 1, 1))[:, 0, 0]
        scale = 255.0 if ds.dtypes[0] == "uint8" else 1.0
    np.testing.assert_allclose(attention["values"], stored / scale, atol=1e-6)
    assert sum(attention["values"]) == pytest.approx(1.0, abs=0.02)
    probabilities = layers["probabilities"]
    assert len(probabilities["values"]) == len(probabilities["classes"])
    assert (
        layers["class"]["class"]
        == probabilities["classes"][int(np.argmax(probabilities["values"]))]
    )


def test_a_crop_scenes_input_shows_its_red_green_and_blue_bands(
    owner: httpx.Client, crop_scene: dict[str, Any]
) -> None:
    preview = rgba(owner.get(f"/jobs/{crop_scene['job_id']}/preview/input.png").content)
    with rasterio.open(crop_scene["paths"][0]) as ds:
        bands = ds.read().astype(float)
    shown = preview[3] == 255
    assert shown.mean() > 0.9

    def corr(channel: int, band: int) -> float:
        return float(np.corrcoef(preview[channel][shown], bands[band][shown])[0, 1])

    # crops takes B2, B3, B4, ...: red is B4 (band 3), green B3, blue B2.
    assert corr(0, 2) > 0.9
    assert corr(1, 1) > 0.9
    assert corr(2, 0) > 0.9
    assert abs(corr(0, 0)) < 0.5
