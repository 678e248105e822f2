"""/models lists the served models; /models/{ref} is one manifest, latest or exact."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from service.api.state import AppState


def test_models_are_listed_and_found_by_name_or_exact_version(
    served: Callable[..., None],
) -> None:
    async def scenario(client: httpx.AsyncClient, state: AppState) -> None:
        listed = {m["name"]: m for m in (await client.get("/models")).json()["models"]}
        assert {"footprints", "crops"} <= set(listed)
        foot = listed["footprints"]
        assert foot["task"] == "segmentation"
        assert "gate_1" in foot["attention_layers"]
        latest = (await client.get("/models/footprints")).json()
        exact = (await client.get(f"/models/footprints:{foot['latest']}")).json()
        assert latest == exact
        assert exact["ref"] == f"footprints:{foot['latest']}"
        assert exact["input"]["bands"] == ["red", "green", "blue"]
        assert (exact["precision"], exact["quantization"]) == ("float32", {})

    served(scenario)


def test_unknown_models_and_versions_are_404s_naming_what_is_served(
    served: Callable[..., None],
) -> None:
    async def scenario(client: httpx.AsyncClient, state: AppState) -> None:
        missing = await client.get("/models/roads")
        assert missing.status_code == 404
        assert "served: crops, crops-mato-grosso, footprints" in missing.json()["error"]["message"]
        assert (await client.get("/models/footprints:9.9.9")).status_code == 404

    served(scenario)


def test_a_models_onnx_file_is_handed_out_as_served_or_not_at_all(
    served: Callable[..., None],
) -> None:
    async def scenario(client: httpx.AsyncClient, state: AppState) -> None:
        model = state.repository.get("footprints")
        exact = await client.get(f"/models/{model.manifest.ref}/onnx")
        assert exact.status_code == 200
        assert exact.content == model.path.read_bytes()
        assert f"footprints-{model.manifest.version}.onnx" in exact.headers["content-disposition"]
        assert "immutable" in exact.headers["cache-control"]
        # A bare name follows the latest version, so it must not be cached for good.
        assert (await client.get("/models/footprints/onnx")).headers["cache-control"] == "no-cache"
        assert (await client.get("/models/roads/onnx")).status_code == 404

    served(scenario)

    async def closed(client: httpx.AsyncClient, state: AppState) -> None:
        refused = await client.get("/models/footprints/onnx")
        assert refused.status_code == 404
        assert "ATTNSERVE_MODEL_DOWNLOADS" in refused.json()["error"]["message"]

    served(closed, model_downloads=False)
