"""Whole scenes as async jobs on a live server: progress, COGs, footprints, cancel, resume."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from service.jobs.local import LocalJobStore
from service.pipeline.scene import SceneOptions, SceneRunner
from service.raster.decode import RasterInfo
from service.raster.georef import Georeference
from tests.helpers.jobs import download, follow, submit
from tests.helpers.scenes import dated_stack, tile_scene
from tests.helpers.server import LiveServer


def test_scene_job_progress_cogs_and_footprints(
    start_server,
    shared_data: Path,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    scene = tile_scene(shared_data / "cogeo.tif", 2, tmp_path / "scene.tif")
    # Over the synchronous limit, so the scene becomes a job without asking.
    server = start_server(max_sync_pixels=str(1024 * 1024))
    job = submit(server, [scene], model="footprints")
    assert job["state"] == "queued"
    body, seen = follow(server, job["job_id"])
    assert body["state"] == "done", body
    assert seen == sorted(seen)
    total = body["progress"]["total"]
    assert total > 1
    assert seen[-1] == total
    assert body["progress"]["fraction"] == 1.0
    links = body["links"]
    with rasterio.open(scene) as src:
        for key in ("prediction_geotiff", "attention_geotiff"):
            path = download(server, links[key], tmp_path / f"{key}.tif")
            valid, errors, _ = cog_validate(path)
            assert valid, errors
            with rasterio.open(path) as out:
                assert out.crs == src.crs
                assert out.transform == src.transform
                assert (out.width, out.height) == (src.width, src.height)
                assert out.overviews(1)
                assert out.block_shapes[0] == (512, 512)
    with rasterio.open(tmp_path / "attention_geotiff.tif") as att:
        assert att.count == len([a for a in body["attention"] if a["kind"] == "spatial"])
        values = att.read(1, out_shape=(256, 256))
        assert np.nanmin(values) >= 0
        assert np.nanmax(values) <= 1
    channel = [a for a in body["attention"] if a["kind"] == "channel"]
    assert channel
    one = httpx.get(f"{server.url}{channel[0]['url']}").json()
    assert len(one["values"]) == 3
    geo = httpx.get(server.url + links["footprints"], timeout=120)
    assert geo.status_code == 200
    assert geo.headers["content-type"].startswith("application/geo+json")
    collection = geo.json()
    assert collection["type"] == "FeatureCollection"
    for feature in collection["features"]:
        lon, lat = feature["geometry"]["coordinates"][0][0]
        assert -180 <= lon <= 180
        assert -90 <= lat <= 90
        assert 0 <= feature["properties"]["mean_probability"] <= 1


def test_uint8_zstd_outputs(start_server, shared_data: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = start_server()
    job = submit(
        server,
        [shared_data / "RGB.byte.tif"],
        model="footprints",
        uint8="true",
        compress="zstd",
        tile_size="256",
        overlap="64",
        **{"async": "true"},
    )
    body, _ = follow(server, job["job_id"])
    assert body["state"] == "done", body
    assert body["tiling"] == {"tile_size": 256, "overlap": 64, "tiles": body["tiling"]["tiles"]}
    path = download(server, body["links"]["attention_geotiff"], tmp_path / "att.tif")
    assert cog_validate(path)[0]
    with rasterio.open(path) as out, rasterio.open(shared_data / "RGB.byte.tif") as src:
        assert out.dtypes[0] == "uint8"
        assert out.compression.name == "zstd"
        # nodata of the input is carried as the output's mask
        assert (out.dataset_mask() > 0).sum() == (src.dataset_mask() > 0).sum()


def test_cancel_and_resume(start_server, shared_data: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    scene = tile_scene(shared_data / "cogeo.tif", 2, tmp_path / "scene.tif")
    server = start_server(scene_tiles_in_flight="2", max_sync_pixels=str(1024 * 1024))
    doomed = submit(server, [scene], model="footprints")["job_id"]
    kept = submit(server, [scene], model="footprints")["job_id"]
    resp = httpx.delete(f"{server.url}/jobs/{doomed}")
    assert resp.status_code == 200
    body, _ = follow(server, doomed)
    assert body["state"] == "cancelled"
    # Stop the server while the second job is queued or running; it must resume.
    assert server.stop() in (0, -15)
    again = start_server(max_sync_pixels=str(1024 * 1024))
    body, _ = follow(again, kept)
    assert body["state"] == "done", body
    assert body["progress"]["done"] == body["progress"]["total"]


def test_crop_scene_from_dated_images(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dates = ["2024-04-03", "2024-05-20", "2024-07-09"]
    paths = dated_stack(tmp_path, 300, dates)
    server = start_server()
    job = submit(server, paths, model="crops", dates=",".join(dates), **{"async": "true"})
    body, _ = follow(server, job["job_id"])
    assert body["state"] == "done", body
    files = {k: v for k, v in body["links"].items() if k.startswith("file:")}
    assert set(files) == {"file:class.tif", "file:probabilities.tif", "file:attention.tif"}
    att = download(server, files["file:attention.tif"], tmp_path / "att.tif")
    cls = download(server, files["file:class.tif"], tmp_path / "cls.tif")
    for path in (att, cls):
        assert cog_validate(path)[0]
    with rasterio.open(att) as a:
        assert a.count == 3
        assert [d.split()[1] for d in a.descriptions] == dates
        weights = a.read()
        np.testing.assert_allclose(
            np.nansum(weights, axis=0)[np.isfinite(weights[0])], 1.0, atol=1e-4
        )
    with rasterio.open(cls) as c:
        assert c.dtypes[0] == "uint8"
        assert c.nodata == 255
        classes = c.read(1)
        assert classes[classes != 255].max() < len(body["attention"][0].get("dates", dates)) + 10


@pytest.mark.parametrize(
    "fields", [{"tile_size": "10"}, {"overlap": "x"}, {"compress": "lzw"}, {"async": "maybe"}]
)
def test_bad_scene_options_are_422(
    live: LiveServer, shared_data: Path, fields: dict[str, str]
) -> None:
    data = (shared_data / "RGB.byte.tif").read_bytes()
    resp = httpx.post(
        f"{live.url}/predict",
        data={"model": "footprints", "async": "true", **fields},
        files={"image": ("a.tif", data, "image/tiff")},
        timeout=60,
    )
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["code"] == "invalid_input"


def test_dated_uploads_go_sync_or_to_a_job_by_size_and_must_share_it(
    start_server,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    dates = ["2024-04-03", "2024-05-20"]

    def upload(*sizes: int) -> httpx.Response:
        files = []
        for i, (size, day) in enumerate(zip(sizes, dates, strict=True)):
            out = tmp_path / f"{i}-{size}"
            out.mkdir(exist_ok=True)
            path = dated_stack(out, size, [day], seed=i)[0]
            files.append(("image", (path.name, path.read_bytes(), "image/tiff")))
        return httpx.post(
            f"{server.url}/predict",
            data={"model": "crops", "dates": ",".join(dates)},
            files=files,
            timeout=120,
        )

    server = start_server(max_sync_series_pixels=str(64 * 64))
    small = upload(48, 48)
    assert small.status_code == 200, small.text
    assert small.json()["georeference"]["width"] == 48
    # Over the synchronous limit: a job, without asking for one.
    large = upload(80, 80)
    assert large.status_code == 202, large.text
    # Dated images of two sizes are refused, by the synchronous path or the job's check.
    for sizes in ((48, 56), (48, 80), (80, 48)):
        resp = upload(*sizes)
        assert resp.status_code == 422, (sizes, resp.text)
        assert "size" in resp.json()["error"]["message"], resp.text


@pytest.mark.parametrize("stream", [True, False])
def test_the_runner_streams_float_cogs_unless_told_not_to(tmp_path: Path, stream: bool) -> None:
    crs = rasterio.crs.CRS.from_epsg(32631).to_wkt()
    georef = Georeference(crs, (10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0), 1024, 1024)
    info = RasterInfo(1024, 1024, 3, "uint8", None, georef)
    runner = SceneRunner(LocalJobStore(tmp_path / "jobs", ttl_s=60), 30.0, cog_stream=stream)
    sink = runner.sink(None, SceneOptions(), "prediction.tif", info, ["p"], folder=tmp_path)  # type: ignore[arg-type]
    assert sink.streamed is stream
    sink.abort()
    assert not list(tmp_path.glob("prediction*"))
