"""STAC Items of jobs on a live server: valid against the shipped schemas, true to the job."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import rasterio.warp

from service.pipeline.stac import CLASSIFICATION, MLM, PROJECTION, RASTER
from service.pipeline.stac_validation import validate_item
from tests.helpers.bodies import upload
from tests.helpers.geotiff import ORIGIN, UTM, geotiff, noise
from tests.helpers.scenes import dated_stack
from tests.helpers.server import LiveServer
from tests.service.api.routes.conftest import OTHER_KEY as OTHER

DATES = ["2024-04-03", "2024-05-20", "2024-07-09"]


def _done(owner: httpx.Client, made: httpx.Response) -> str:
    assert made.status_code in (200, 202), made.text
    job_id = str(made.json()["job_id"])
    deadline = time.monotonic() + 300
    while (body := owner.get(f"/jobs/{job_id}").json())["state"] not in ("done", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert body["state"] == "done", body
    return job_id


def _item(owner: httpx.Client, job_id: str) -> dict[str, Any]:
    answer = owner.get(f"/jobs/{job_id}/stac")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/geo+json"
    item = answer.json()
    used = validate_item(item)
    for schema in (PROJECTION, RASTER, MLM):
        assert schema in used
    return dict(item)


def _assets_answer(owner: httpx.Client, item: dict[str, Any]) -> None:
    for key, asset in item["assets"].items():
        got = owner.get(asset["href"], timeout=60)
        assert got.status_code == 200, (key, got.text[:200])
        assert got.headers["content-type"].split(";")[0] == asset["type"].split(";")[0], key


def _bounds(side: int) -> tuple[float, ...]:
    left, top = ORIGIN.c, ORIGIN.f
    right, bottom = left + side * 0.5, top - side * 0.5
    return tuple(
        rasterio.warp.transform_bounds(UTM, "EPSG:4326", left, bottom, right, top, densify_pts=21)
    )


def test_a_footprints_scene_job_is_a_valid_item_of_its_cogs_and_footprints(
    owner: httpx.Client,
) -> None:
    made = owner.post(
        "/predict", timeout=120, **upload(geotiff(noise(3, 600)), **{"async": "true"})
    )
    job_id = _done(owner, made)
    item = _item(owner, job_id)
    assert item["id"] == job_id
    np.testing.assert_allclose(item["bbox"], _bounds(600), atol=1e-9)
    ring = np.array(item["geometry"]["coordinates"][0])
    np.testing.assert_allclose(ring.min(axis=0), _bounds(600)[:2], atol=1e-9)
    props = item["properties"]
    assert props["proj:code"] == UTM
    assert props["proj:shape"] == [600, 600]
    assert props["proj:transform"] == list(ORIGIN)[:6]
    assert props["mlm:name"] == "footprints"
    assert props["mlm:tasks"] == ["semantic-segmentation"]
    assert props["mlm:input"][0]["bands"] == ["red", "green", "blue"]
    assert props["datetime"] is not None
    assets = item["assets"]
    assert {k for k, a in assets.items() if "data" in a["roles"]} == {
        "prediction", "attention", "footprints"
    }  # fmt: skip
    assert assets["prediction"]["href"].endswith(f"/jobs/{job_id}/files/prediction.tif")
    assert "cloud-optimized" in assets["prediction"]["type"]
    assert [b["name"] for b in assets["attention"]["bands"]] == [f"gate_{i}" for i in range(1, 5)]
    assert assets["overview"]["roles"] == ["overview"]
    assert "mlm:model" in assets["model"]["roles"]
    assert "metadata" in assets["job"]["roles"]
    assert CLASSIFICATION not in item["stac_extensions"]
    _assets_answer(owner, item)


def test_a_crop_scene_item_has_the_dates_range_and_its_classes(
    owner: httpx.Client, tmp_path: Path
) -> None:
    paths = dated_stack(tmp_path, 96, DATES)
    files = [("image", (p.name, p.read_bytes(), "image/tiff")) for p in paths]
    fields = {"model": "crops", "dates": ",".join(DATES), "async": "true"}
    job_id = _done(owner, owner.post("/predict", data=fields, files=files, timeout=120))
    item = _item(owner, job_id)
    assert CLASSIFICATION in item["stac_extensions"]
    props = item["properties"]
    assert props["datetime"] is None
    assert props["start_datetime"] == "2024-04-03T00:00:00Z"
    assert props["end_datetime"] == "2024-07-09T00:00:00Z"
    assert props["proj:code"] == UTM
    assert props["mlm:tasks"] == ["classification"]
    model = owner.get("/models/crops").json()
    classes = item["assets"]["class"]["classification:classes"]
    assert [c["title"] for c in classes if not c.get("nodata")] == model["classes"]
    assert classes[-1] == {"value": 255, "name": "no_class", "nodata": True}
    assert item["assets"]["class"]["bands"][0]["nodata"] == 255
    dates = [b["name"] for b in item["assets"]["attention"]["bands"]]
    assert dates == [f"attention:{d}" for d in DATES]
    assert "footprints" not in item["assets"]
    _assets_answer(owner, item)


def test_a_synchronous_crops_job_points_at_its_geotiffs(
    owner: httpx.Client, tmp_path: Path
) -> None:
    paths = dated_stack(tmp_path, 32, DATES[:1])
    files = [("image", (p.name, p.read_bytes(), "image/tiff")) for p in paths]
    made = owner.post("/predict", data={"model": "crops", "dates": DATES[0]}, files=files)
    assert made.status_code == 200, made.text
    item = _item(owner, made.json()["job_id"])
    assert item["properties"]["datetime"] == "2024-04-03T00:00:00Z"
    prediction = item["assets"]["prediction"]
    assert prediction["href"].endswith("/prediction?format=geotiff")
    assert prediction["bands"][0]["nodata"] == "nan"  # the class band as float32
    _assets_answer(owner, item)


def test_another_keys_item_is_a_404(keyed_server: LiveServer, owner: httpx.Client) -> None:
    made = owner.post("/predict", **upload(geotiff(noise(3, 64))))
    job_id = made.json()["job_id"]
    other = httpx.get(
        f"{keyed_server.url}/jobs/{job_id}/stac", headers={"Authorization": f"Bearer {OTHER}"}
    )
    assert other.status_code == 404
    assert owner.get("/jobs/not-a-job/stac").status_code == 404
