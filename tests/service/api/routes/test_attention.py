"""/attention: a job's attention layers listed with links, one at a time, or all as GeoTIFF."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from service.api.state import AppState
from service.app import create_app
from service.config import Settings
from service.runtime.manifest import sidecar_path
from service.runtime.manifest_draft import draft_manifest
from tests.helpers.asgi import in_process
from tests.helpers.bodies import upload
from tests.helpers.geotiff import geotiff, noise, read_geotiff
from tests.helpers.onnx_graphs import (
    chip_classifier,
    edited_draft,
    headed_segmenter,
    with_channel_weights,
)


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


def test_heads_and_channel_weights_of_a_sidecar_model(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    path = headed_segmenter(models / "heads-1.0.0.onnx")
    manifest = edited_draft(draft_manifest(path).manifest, name="heads")
    manifest["outputs"][3]["channels"] = ["roofs", "roads", "trees", "water"]
    sidecar_path(path).write_text(json.dumps(manifest))
    # Warmed up: the load's run holds every output to the manifest, too.
    app = create_app(Settings(model_dir=models, job_dir=tmp_path / "jobs", warmup=True))
    image = noise(3, 64).astype(np.uint8)

    async def scenario(client: httpx.AsyncClient) -> None:
        made = await client.post("/predict", **upload(geotiff(image), model="heads"))
        assert made.status_code == 200, made.text
        job_id = made.json()["job_id"]
        listed = {la["name"]: la for la in made.json()["attention"]}
        assert (listed["heads"]["heads"], listed["heads"]["shape"]) == (2, [2, 64, 64])
        # Channel weights, named by the manifest or by the input's bands, in the
        # job's answer and listing too: they are few.
        assert list(listed["se"]["weights"]) == ["roofs", "roads", "trees", "water"]
        listing = (await client.get(f"/attention/{job_id}")).json()
        assert [la["name"] for la in listing["layers"] if "weights" in la] == ["bands", "se"]
        se = (await client.get(f"/attention/{job_id}/se")).json()
        assert list(se["weights"]) == ["roofs", "roads", "trees", "water"]
        assert se["weights"]["roofs"] > 0.5 > se["weights"]["water"]
        bands = (await client.get(f"/attention/{job_id}/bands")).json()
        assert list(bands["weights"]) == ["red", "green", "blue"]
        refused = await client.get(f"/attention/{job_id}/se", params={"format": "geotiff"})
        assert refused.status_code == 422
        assert "no spatial extent" in refused.json()["error"]["message"]
        # Two heads: their mean by default, one on request, and the answer says which.
        mean = (await client.get(f"/attention/{job_id}/heads")).json()
        one = (await client.get(f"/attention/{job_id}/heads", params={"head": 1})).json()
        assert (mean["head"], one["head"]) == ("mean", 1)
        red_head = (await client.get(f"/attention/{job_id}/heads", params={"head": 0})).json()
        np.testing.assert_allclose(
            np.asarray(mean["values"]),
            (np.asarray(red_head["values"]) + np.asarray(one["values"])) / 2,
            atol=1e-6,
        )
        # Head 1 weighs blue: where blue is bright, so is it.
        blue = image[2].astype(np.float64)
        assert np.corrcoef(np.asarray(one["values"]).ravel(), blue.ravel())[0, 1] > 0.3
        tiff = await client.get(
            f"/attention/{job_id}/heads", params={"format": "geotiff", "head": 1}
        )
        np.testing.assert_allclose(read_geotiff(tiff.content)[0], one["values"], atol=1e-6)
        for layer, head, words in [
            ("heads", 2, "head 2 is out of range: layer 'heads' has 2 heads, 0 to 1"),
            ("se", 0, "head 0: layer 'se' has a single head; leave head out"),
        ]:
            wrong = await client.get(f"/attention/{job_id}/{layer}", params={"head": head})
            assert wrong.status_code == 422
            assert words in wrong.json()["error"]["message"]
        stacked = await client.get(f"/attention/{job_id}", params={"format": "geotiff", "head": 0})
        assert read_geotiff(stacked.content).shape == (1, 64, 64)
        # On the map, one layer per head.
        tiles = (await client.get(f"/jobs/{job_id}/tiles")).json()
        names = [la["name"] for la in tiles["layers"]]
        assert names == ["probability", "heads:head_0", "heads:head_1"]
        preview = await client.get(f"/jobs/{job_id}/preview/heads:head_1.png")
        assert (preview.status_code, preview.headers["content-type"]) == (200, "image/png")
        # A scene job keeps the mean over heads, and channel weights averaged over its tiles.
        scene = await client.post(
            "/predict", **upload(geotiff(noise(3, 256)), model="heads", **{"async": "true"})
        )
        assert scene.status_code == 202, scene.text
        scene_id = scene.json()["job_id"]
        for _ in range(600):
            body = (await client.get(f"/jobs/{scene_id}")).json()
            if body["state"] not in ("queued", "running"):
                break
            await asyncio.sleep(0.1)
        assert body["state"] == "done", body
        layers = {la["name"]: la for la in body["attention"]}
        assert (layers["heads"]["shape"], "heads" in layers["heads"]) == ([256, 256], False)
        assert layers["se"]["channels"] == ["roofs", "roads", "trees", "water"]
        assert layers["bands"]["bands"] == ["red", "green", "blue"]
        mean = await client.get(f"/attention/{scene_id}/heads", params={"format": "geotiff"})
        assert read_geotiff(mean.content).shape == (1, 256, 256)
        one = await client.get(f"/attention/{scene_id}/heads", params={"head": 0})
        assert one.status_code == 422

    async def main() -> None:
        async with in_process(app, ready_s=60) as client:
            await scenario(client)

    asyncio.run(main())


def test_a_chip_classifier_s_channel_weights_are_served_by_name(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    path = with_channel_weights(chip_classifier(models / "scenes-1.0.0.onnx"))
    manifest = {**draft_manifest(path).manifest, "classes": ["reddish", "greenish", "bluish"]}
    sidecar_path(path).write_text(json.dumps(manifest))
    app = create_app(Settings(model_dir=models, job_dir=tmp_path / "jobs", warmup=True))

    async def scenario(client: httpx.AsyncClient) -> None:
        made = await client.post("/predict", **upload(geotiff(noise(3, 64)), model="scenes"))
        assert made.status_code == 200, made.text
        job_id = made.json()["job_id"]
        se = next(la for la in made.json()["attention"] if la["name"] == "se")
        assert list(se["weights"]) == ["channel_0", "channel_1", "channel_2", "channel_3"]
        assert se["weights"]["channel_1"] > se["weights"]["channel_0"] > 0.5
        refused = await client.get(f"/attention/{job_id}/se", params={"format": "geotiff"})
        assert refused.status_code == 422
        # The job's GeoTIFF holds its maps alone.
        stacked = await client.get(f"/attention/{job_id}", params={"format": "geotiff"})
        assert read_geotiff(stacked.content).shape == (2, 64, 64)
        # A scene mosaics the maps chip by chip; weights per chip have no mosaic.
        scene = await client.post(
            "/predict", **upload(geotiff(noise(3, 128)), model="scenes", **{"async": "true"})
        )
        assert scene.status_code == 202, scene.text
        for _ in range(600):
            body = (await client.get(f"/jobs/{scene.json()['job_id']}")).json()
            if body["state"] not in ("queued", "running"):
                break
            await asyncio.sleep(0.1)
        assert body["state"] == "done", body
        assert [la["name"] for la in body["attention"]] == ["tokens", "gate"]

    async def main() -> None:
        async with in_process(app, ready_s=60) as client:
            await scenario(client)

    asyncio.run(main())
