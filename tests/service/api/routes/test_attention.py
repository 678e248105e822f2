"""/attention: a job's attention layers listed with links, one at a time, or all as GeoTIFF."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from service.api.state import AppState
from tests.helpers.bodies import upload
from tests.helpers.geotiff import geotiff, noise, read_geotiff


def test_layers_are_listed_served_one_by_one_and_stacked(served: Callable[..., None]) -> None:
    async def scenario(client: httpx.AsyncClient, state: AppState) -> None:
        made = await client.post("/predict", **upload(geotiff(noise(3, 64))))
        job_id = made.json()["job_id"]
        listed = (await client.get(f"/attention/{job_id}")).json()
        names = [layer["name"] for layer in listed["layers"]]
        assert "gate_1" in names
        assert all(layer["role"] == "attention" for layer in listed["layers"])
        gate = (await client.get(f"/attention/{job_id}/gate_1")).json()
        assert gate["name"] == "gate_1"
        # Coarse gates are served on the input's grid.
        assert gate["shape"] == [64, 64]
        assert 0 <= gate["statistics"]["min"] <= gate["statistics"]["max"] <= 1
        stacked = await client.get(f"/attention/{job_id}", params={"format": "geotiff"})
        spatial = [layer for layer in listed["layers"] if layer["kind"] == "spatial"]
        assert read_geotiff(stacked.content).shape == (len(spatial), 64, 64)
        missing = await client.get(f"/attention/{job_id}/gate_99")
        assert missing.status_code == 404

    served(scenario)
