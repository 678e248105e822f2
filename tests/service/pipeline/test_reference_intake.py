"""Inputs by reference end to end: a live server reads COGs from a real S3 server and HTTP server.

Each reference's answer is compared with the answer to uploading the same file;
the SSRF table checks each forbidden URL is refused (403) without a connection
to a listener on its target.
"""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import obstore
import pytest
import rasterio

from service.jobs.objects import connect
from tests.helpers.geotiff import read_geotiff, write_geotiff
from tests.helpers.jobs import follow
from tests.helpers.objectstore import SeaweedS3
from tests.helpers.ranged_http import RangedServer, ranged_server
from tests.helpers.scenes import dated_stack, tile_scene
from tests.helpers.server import LiveServer, settings_env

DATES = ["2024-04-01", "2024-05-03", "2024-06-04"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Path:
    """A tile (a COG of real imagery), a 2048 x 2048 scene, its bands apart, dated S2 stacks."""
    root = tmp_path_factory.mktemp("references")
    shutil.copy(shared_data / "cogeo.tif", root / "tile.tif")
    tile_scene(shared_data / "cogeo.tif", 2, root / "scene.tif")
    with rasterio.open(root / "tile.tif") as src:
        data, profile = src.read(), src.profile
    for i, band in enumerate(("red", "green", "blue")):
        write_geotiff(
            root / f"{band}.tif", data[i : i + 1], crs=profile["crs"], transform=src.transform
        )
    dated_stack(root, 32, DATES)
    return root


@pytest.fixture(scope="module")
def http(files: Path) -> Iterator[RangedServer]:
    """The files on an HTTP server that honours Range."""
    with ranged_server(files) as server:
        yield server


@pytest.fixture(scope="module")
def forbidden(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RangedServer]:
    """A listener no reference may reach: it counts any connection."""
    root = tmp_path_factory.mktemp("forbidden")
    (root / "x.tif").write_bytes(b"II*\x00secret")
    with ranged_server(root) as server:
        yield server


@pytest.fixture(scope="module")
def s3(seaweed: tuple[SeaweedS3, str], files: Path) -> str:
    """The files in the S3 server's bucket: ``s3://bucket/refs-<token>/``."""
    server, bucket = seaweed
    prefix = f"refs-{secrets.token_hex(4)}"
    with pytest.MonkeyPatch.context() as mp:
        for key, value in server.env().items():
            mp.setenv(key, value)
        store = connect(f"s3://{bucket}/{prefix}")
        for path in files.iterdir():
            obstore.put(store, path.name, path.read_bytes())
    return f"s3://{bucket}/{prefix}/"


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    model_dir: Path,
    seaweed: tuple[SeaweedS3, str],
    http: RangedServer,
    s3: str,
) -> Iterator[LiveServer]:
    """A live server allowed to read the HTTP server's files (by IP, and by name) and ``s3``."""
    tmp = tmp_path_factory.mktemp("reference-server")
    port = http.server_address[1]
    allow = [http.url, f"http://localhost:{port}/", s3]
    env = {
        "ATTNSERVE_MODEL_DIR": str(model_dir),
        "ATTNSERVE_JOB_DIR": str(tmp / "jobs"),
        **settings_env(input_allowlist=json.dumps(allow), max_sync_pixels=str(1024 * 1024)),
        **seaweed[0].env(),
    }
    with LiveServer(env, tmp / "server.log") as live:
        yield live


def _predict(server: LiveServer, **kwargs: Any) -> httpx.Response:
    return httpx.post(f"{server.url}/predict", timeout=300, **kwargs)


def _prediction(server: LiveServer, body: dict[str, Any]) -> np.ndarray:
    resp = httpx.get(f"{server.url}/jobs/{body['job_id']}/prediction?format=geotiff", timeout=120)
    assert resp.status_code == 200, resp.text
    return read_geotiff(resp.content)


def _upload(server: LiveServer, paths: list[Path], **fields: str) -> dict[str, Any]:
    files = [("image", (p.name, p.read_bytes(), "image/tiff")) for p in paths]
    resp = _predict(server, data=fields, files=files)
    assert resp.status_code in (200, 202), resp.text
    return resp.json()  # type: ignore[no-any-return]


@pytest.fixture(params=["http", "s3"])
def base(request: pytest.FixtureRequest, http: RangedServer, s3: str) -> str:
    """Where the files are: the HTTP server's URL, then the bucket's prefix."""
    return http.url if request.param == "http" else s3


def test_href_answers_as_the_same_file_uploaded(server: LiveServer, base: str, files: Path) -> None:
    href = base + "tile.tif"
    uploaded = _upload(server, [files / "tile.tif"], model="footprints")
    form = _predict(server, data={"model": "footprints", "href": href})
    assert form.status_code == 200, form.text
    as_json = _predict(server, json={"model": "footprints", "href": href})
    assert as_json.status_code == 200, as_json.text
    expected = _prediction(server, uploaded)
    for resp in (form, as_json):
        assert resp.json()["georeference"] == uploaded["georeference"]
        np.testing.assert_allclose(_prediction(server, resp.json()), expected, atol=1e-5)


def _scene_outputs(server: LiveServer, body: dict[str, Any]) -> np.ndarray:
    done, _ = follow(server, body["job_id"])
    assert done["state"] == "done", done
    resp = httpx.get(server.url + done["links"]["prediction_geotiff"], timeout=120)
    assert resp.status_code == 200
    return read_geotiff(resp.content)


def test_large_href_runs_as_a_scene_job_read_where_it_is(
    server: LiveServer, http: RangedServer, base: str, files: Path
) -> None:
    uploaded = _upload(server, [files / "scene.tif"], model="footprints")
    sent = http.sent
    resp = _predict(server, json={"model": "footprints", "href": base + "scene.tif"})
    assert resp.status_code == 202, resp.text
    job = resp.json()
    np.testing.assert_allclose(
        _scene_outputs(server, job), _scene_outputs(server, uploaded), atol=1e-5
    )
    # Read where it is: no copy of the input among the job's files.
    jobs = Path(server.env["ATTNSERVE_JOB_DIR"])
    assert list(jobs.glob(f"*/{uploaded['job_id']}/input_0.tif"))
    assert list(jobs.glob(f"*/{job['job_id']}/*.tif"))  # its outputs
    assert not list(jobs.glob(f"*/{job['job_id']}/input*"))
    if base == http.url:
        # The job's passes share one cache: fetched once by the job (3.7 times over
        # without it), once by the value check at intake, a decimated read that touches
        # every block of a file without overviews.
        ratio = (http.sent - sent) / (files / "scene.tif").stat().st_size
        print(f"scene job by reference: {ratio:.2f} times the file's bytes fetched")
        assert 0.5 < ratio < 2.2


def _item(s3: str, assets: dict[str, Any], day: str = "2024-04-01") -> dict[str, Any]:
    return {
        "type": "Feature",
        "stac_version": "1.1.0",
        "id": f"item-{day}",
        "geometry": None,
        "properties": {"datetime": f"{day}T10:30:00Z"},
        "links": [],
        "assets": {k: {"href": s3 + v[0], **v[1]} for k, v in assets.items()},
    }


def test_stac_item_on_s3_predicts_footprints(
    server: LiveServer,
    s3: str,
    files: Path,
    seaweed: tuple[SeaweedS3, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rgb = {"eo:bands": [{"name": b, "common_name": b} for b in ("red", "green", "blue")]}
    item = _item(
        s3,
        {
            "visual": ("tile.tif", rgb),
            **{
                b: (f"{b}.tif", {"eo:bands": [{"common_name": b}]})
                for b in ("red", "green", "blue")
            },
        },
    )
    # The item itself in the bucket, read by URL; its asset hrefs relative to it.
    for key, value in seaweed[0].env().items():
        monkeypatch.setenv(key, value)
    bucket_store = connect(s3.rstrip("/"))
    relative = {**item, "assets": {"visual": {"href": "tile.tif", **rgb}}}
    obstore.put(bucket_store, "item.json", json.dumps(relative).encode())
    expected = _prediction(server, _upload(server, [files / "tile.tif"], model="footprints"))
    answers = [
        _predict(server, json={"model": "footprints", "stac": item}),  # matched by band names
        _predict(server, json={"model": "footprints", "stac": item, "assets": "red,green,blue"}),
        _predict(server, data={"model": "footprints", "stac": s3 + "item.json"}),
    ]
    for resp in answers:
        assert resp.status_code == 200, resp.text
        np.testing.assert_allclose(_prediction(server, resp.json()), expected, atol=1e-5)
    geo = httpx.get(f"{server.url}/jobs/{answers[0].json()['job_id']}/footprints", timeout=60)
    assert geo.status_code == 200
    assert geo.json()["type"] == "FeatureCollection"
    wrong = _predict(server, json={"model": "footprints", "stac": item, "assets": "nir"})
    assert wrong.status_code == 422
    assert "no asset nir" in wrong.json()["error"]["message"]


def test_item_collection_of_dated_items_for_the_crop_model(
    server: LiveServer, s3: str, files: Path
) -> None:
    s2 = ["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"]
    bands = {"bands": [{"name": b} for b in s2]}
    # Listed out of order: the series follows the items' datetimes.
    items = [_item(s3, {"data": (f"s2_{d}.tif", bands)}, d) for d in reversed(DATES)]
    resp = _predict(
        server, json={"model": "crops", "stac": {"type": "FeatureCollection", "features": items}}
    )
    assert resp.status_code == 200, resp.text
    paths = [files / f"s2_{d}.tif" for d in DATES]
    uploaded = _upload(server, paths, model="crops", dates=",".join(DATES))
    np.testing.assert_allclose(
        _prediction(server, resp.json()), _prediction(server, uploaded), atol=1e-5
    )
    listed = _predict(
        server, json={"model": "crops", "href": [s3 + p.name for p in paths], "dates": DATES}
    )
    assert listed.status_code == 200, listed.text
    np.testing.assert_allclose(
        _prediction(server, listed.json()), _prediction(server, uploaded), atol=1e-5
    )
    # As a scene job, each date read where it is.
    hrefs = {"href": [s3 + p.name for p in paths], "dates": DATES, "async": True}
    job = _predict(server, json={"model": "crops", **hrefs})
    assert job.status_code == 202, job.text
    upload_job = _upload(server, paths, model="crops", dates=",".join(DATES), **{"async": "true"})
    np.testing.assert_allclose(
        _scene_outputs(server, job.json()), _scene_outputs(server, upload_job), atol=1e-5
    )


def test_ssrf_table_each_refused_before_any_connection(
    server: LiveServer, http: RangedServer, forbidden: RangedServer, s3: str
) -> None:
    port = http.server_address[1]
    bucket = s3.split("/")[2]
    table = {
        "outside the allowlist": "https://example.com/tile.tif",
        "another port of 127.0.0.1": f"{forbidden.url}x.tif",
        "cloud metadata": "http://169.254.169.254/latest/meta-data/",
        "a name resolving to 127.0.0.1": f"http://localhost:{port}/tile.tif",
        "redirect to a forbidden host": f"{http.url}redirect?to={forbidden.url}x.tif",
        "a local file": "file:///etc/passwd",
        "GDAL indirection": f"/vsicurl/{http.url}tile.tif",
        "a bucket not listed": f"s3://not-{bucket}/tile.tif",
        "a key outside the listed prefix": f"s3://{bucket}/elsewhere/tile.tif",
        "credentials in the URL": f"http://user:pw@127.0.0.1:{port}/tile.tif",
    }
    before = http.connections
    for case, href in table.items():
        for kwargs in (
            {"json": {"model": "footprints", "href": href}},
            {"data": {"model": "footprints", "href": href}},
            {"json": {"model": "footprints", "stac": href}},
        ):
            resp = _predict(server, **kwargs)
            assert resp.status_code == 403, (case, resp.text)
            error = resp.json()["error"]
            assert error["code"] == "forbidden"
            assert "secret" not in resp.text
    assert forbidden.connections == 0
    # Only the redirect's own hop reached the allowed server, once per request.
    assert http.connections - before == 3


def test_references_are_off_without_an_allowlist(live: LiveServer, http: RangedServer) -> None:
    before = http.connections
    resp = _predict(live, json={"model": "footprints", "href": f"{http.url}tile.tif"})
    assert resp.status_code == 403
    assert "ATTNSERVE_INPUT_ALLOWLIST" in resp.json()["error"]["message"]
    assert http.connections == before


def test_bad_references_get_clear_4xx(server: LiveServer, http: RangedServer, files: Path) -> None:
    missing = _predict(server, json={"model": "footprints", "href": f"{http.url}nothing.tif"})
    assert missing.status_code == 422
    assert "HTTP 404" in missing.json()["error"]["message"]
    both = _predict(
        server,
        data={"model": "footprints", "href": f"{http.url}tile.tif"},
        files={"image": ("t.tif", (files / "tile.tif").read_bytes(), "image/tiff")},
    )
    assert both.status_code == 422
    crops = _predict(server, json={"model": "crops", "href": f"{http.url}tile.tif"})
    assert crops.status_code == 422


def test_scene_job_by_reference_with_jobs_in_the_object_store(
    start_server: Any, s3_store_url: str, s3: str, files: Path
) -> None:
    # References and jobs in one bucket: the job holds its outputs only, never its input.
    server = start_server(
        job_store=s3_store_url,
        input_allowlist=json.dumps([s3]),
        max_sync_pixels=str(1024 * 1024),
    )
    resp = _predict(server, json={"model": "footprints", "href": s3 + "scene.tif"})
    assert resp.status_code == 202, resp.text
    outputs = _scene_outputs(server, resp.json())
    uploaded = _upload(server, [files / "scene.tif"], model="footprints")
    np.testing.assert_allclose(outputs, _scene_outputs(server, uploaded), atol=1e-5)
    keys = [m["path"] for m in obstore.list(connect(s3_store_url)).collect()]
    ours = [k for k in keys if k.startswith(resp.json()["job_id"] + "/")]
    assert any(k.endswith("meta.json") for k in ours)
    assert not any("input" in k for k in ours)
    assert any(k.endswith("input_0.tif") for k in keys if k.startswith(uploaded["job_id"]))
