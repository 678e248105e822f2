"""/jobs: a job's answer again, its prediction as JSON or GeoTIFF, its deletion."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import numpy as np

from service.api.state import AppState
from tests.helpers.bodies import upload
from tests.helpers.geotiff import ORIGIN, UTM, geotiff, noise, read_geotiff


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
