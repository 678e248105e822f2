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
