"""Seams: tiled inference matches whole-image inference, and buildings stay whole."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import rasterio
from rasterio.transform import from_origin

from tests.helpers.geotiff import read_geotiff, write_geotiff
from tests.helpers.jobs import download, follow, submit
from tests.helpers.server import LiveServer

SIZE = 1024


def _synthetic_scene(path: Path, seed: int) -> Path:
    from models.data.buildings import make_tile

    image, _ = make_tile(np.random.default_rng(seed), SIZE)
    return write_geotiff(
        path,
        image,
        crs="EPSG:32633",
        transform=from_origin(400000, 5500000, 0.5, 0.5),  # the model's gsd_m: no resampling
        tiled=True,
        blockxsize=256,
        blockysize=256,
    )


def test_tiled_inference_matches_whole_image(live: LiveServer, tmp_path: Path) -> None:
    scene = _synthetic_scene(tmp_path / "scene.tif", seed=7)
    tiled = {"model": "footprints", "tile_size": "256", "overlap": "64", "async": "true"}
    whole = httpx.post(
        f"{live.url}/predict",
        data={"model": "footprints", "format": "geotiff"},
        files={"image": ("s.tif", scene.read_bytes(), "image/tiff")},
        timeout=300,
    )
    assert whole.status_code == 200, whole.text
    reference = read_geotiff(whole.content)  # probability, then each gate
    job = submit(live, [scene], **tiled)
    body, _ = follow(live, job["job_id"])
    assert body["state"] == "done", body
    assert body["tiling"]["tile_size"] == 256
    pred = download(live, body["links"]["prediction_geotiff"], tmp_path / "p.tif")
    att = download(live, body["links"]["attention_geotiff"], tmp_path / "a.tif")
    with rasterio.open(pred) as p, rasterio.open(att) as a:
        tiled = np.concatenate([p.read(), a.read()])
    assert tiled.shape == reference.shape
    diff = np.abs(tiled - reference).reshape(len(tiled), -1).max(axis=1)
    assert (diff <= 0.05).all(), dict(enumerate(diff.round(4)))


def test_building_across_a_seam_is_one_polygon(live: LiveServer, tmp_path: Path) -> None:
    # A plain scene with one large roof straddling the seam between the first two
    # tile columns (tiles of 256 overlapping by 64 meet around x = 224).
    rng = np.random.default_rng(3)
    image = np.clip(rng.normal(110, 6, (3, 512, 512)), 0, 255)
    image[:, 200:300, 180:300] = np.array([205, 70, 60])[:, None, None]  # red roof
    image[:, 300:312, 186:306] = 45  # its shadow
    path = tmp_path / "roof.tif"
    write_geotiff(
        path,
        image.astype(np.uint8),
        crs="EPSG:32633",
        transform=from_origin(400000, 5500000, 0.3, 0.3),
    )
    job = submit(
        live, [path], model="footprints", tile_size="256", overlap="64", **{"async": "true"}
    )
    body, _ = follow(live, job["job_id"])
    assert body["state"] == "done", body
    geo = httpx.get(live.url + body["links"]["footprints"] + "?crs=native", timeout=60).json()
    big = [f for f in geo["features"] if f["properties"]["area_px"] > 2000]
    assert len(big) == 1, [f["properties"] for f in geo["features"]]
    props = big[0]["properties"]
    assert props["mean_probability"] >= 0.5
    assert 0 <= props["mean_attention"] <= 1
    xs = [x for x, _ in big[0]["geometry"]["coordinates"][0]]
    # It spans the seam: from left of x=224 px to right of it, in map units.
    assert min(xs) < 400000 + 224 * 0.3 < max(xs)
