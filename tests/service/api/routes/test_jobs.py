"""/jobs: a job's answer again, its prediction as JSON or GeoTIFF, its deletion."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import rasterio.crs

from service.api.state import AppState
from service.jobs.record import Layer
from service.jobs.store import JobStore
from tests.helpers.bodies import upload
from tests.helpers.geotiff import ORIGIN, UTM, geotiff, noise, read_geotiff
from tests.helpers.vectors import open_vector, same_as_geojson

VECTOR_TYPES = {"gpkg": "application/geopackage+sqlite3", "fgb": "application/vnd.flatgeobuf"}


async def _job(client: httpx.AsyncClient) -> dict:
    made = await client.post("/predict", **upload(geotiff(noise(3, 64))))
    assert made.status_code == 200, made.text
    return dict(made.json())


def test_a_job_is_read_back_as_json_and_as_a_georeferenced_geotiff(
    served: Callable[..., None],
) -> None:
    async def scenario(client: httpx.AsyncClient, state: AppState) -> None:
        answer = await _job(client)
        job_id = answer["job_id"]
        again = (await client.get(f"/jobs/{job_id}")).json()
        assert again["job_id"] == job_id
        assert again["state"] == "done"
        prediction = (await client.get(f"/jobs/{job_id}/prediction")).json()
        assert prediction["role"] == "prediction"
        assert prediction["shape"] == [64, 64]
        values = np.array(prediction["values"], dtype=np.float32)
        tif = await client.get(f"/jobs/{job_id}/prediction", params={"format": "geotiff"})
        assert tif.headers["content-type"].startswith("image/tiff")
        bands = read_geotiff(tif.content)
        # The probability band first, then one band per attention gate.
        np.testing.assert_allclose(bands[0], values, atol=1e-6)
        assert len(bands) > 1
        assert answer["georeference"]["transform"] == list(ORIGIN)[:6]
        assert UTM.split(":")[1] in answer["georeference"]["crs"]

    served(scenario)


def test_a_deleted_or_unknown_job_is_a_404(served: Callable[..., None]) -> None:
    async def scenario(client: httpx.AsyncClient, state: AppState) -> None:
        job_id = (await _job(client))["job_id"]
        assert (await client.delete(f"/jobs/{job_id}")).status_code == 200
        for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/prediction", "/jobs/not-a-job"):
            gone = await client.get(path)
            assert gone.status_code == 404, path
            assert gone.json()["error"]["code"] == "not_found"

    served(scenario)


def _class_job(store: JobStore, side: int = 64) -> str:
    """A multi-class segmentation job as its task stores it: class map and an attention gate."""
    record = store.new_record(
        {"name": "landcover", "version": "1", "task": "segmentation"}, "raster", None
    )
    record.georef = {
        "crs": rasterio.crs.CRS.from_string(UTM).to_wkt(),
        "transform": list(ORIGIN)[:6],
        "width": side,
        "height": side,
    }
    classes = np.zeros((side, side), np.uint8)
    classes[8:24, 8:40] = 2
    classes[40:48] = 255  # no class
    gate = np.linspace(0, 1, side * side, dtype=np.float32).reshape(side, side)
    record.layers = [
        Layer(
            "class",
            "prediction",
            "class",
            [side, side],
            "uint8",
            classes=["water", "forest", "built"],
            nodata=255,
        ),
        Layer("gate_1", "attention", "spatial", [side, side], "float32"),
    ]
    store.save(record, {"class": classes, "gate_1": gate})
    return record.id


def test_footprints_download_as_geopackage_and_flatgeobuf_with_the_geojsons_features(
    served: Callable[..., None], tmp_path: Path
) -> None:
    async def scenario(client: httpx.AsyncClient, state: AppState) -> None:
        buildings = (await _job(client))["job_id"]
        regions = _class_job(state.store)
        asked = {
            # Seeded noise: the real-data model gives it probabilities of at most 0.001.
            buildings: ({"threshold": "0.0002", "min_area_px": "0"}, "EPSG:4326"),
            regions: ({"crs": "native"}, UTM),
        }
        for job_id, (params, crs) in asked.items():
            url = f"/jobs/{job_id}/footprints"
            collection = (await client.get(url, params=params)).json()
            assert collection["features"], job_id
            for name, media_type in VECTOR_TYPES.items():
                got = await client.get(url, params={**params, "format": name})
                assert got.status_code == 200, got.text
                assert got.headers["content-type"] == media_type
                assert got.headers["content-disposition"] == (
                    f'attachment; filename="{job_id}-footprints.{name}"'
                )
                opened = open_vector(got.content, tmp_path / f"{job_id}.{name}")
                assert opened["crs"] == crs
                same_as_geojson(opened, collection)
                accepted = await client.get(url, params=params, headers={"Accept": media_type})
                assert accepted.content == got.content  # the same file, kept per format
        documented = (await client.get("/openapi.json")).json()["paths"]
        answer = documented["/jobs/{job_id}/footprints"]["get"]["responses"]["200"]
        assert set(answer["content"]) == {"application/geo+json", *VECTOR_TYPES.values()}
        wrong = await client.get(f"/jobs/{buildings}/footprints", params={"format": "shp"})
        assert wrong.status_code == 422
        assert wrong.json()["error"]["message"] == (
            "format must be one of geojson, gpkg, fgb, not 'shp'"
        )

    served(scenario)
