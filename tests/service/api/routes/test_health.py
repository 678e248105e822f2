"""/healthz says what runs the server; /readyz says whether it takes requests."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from service import __version__
from service.api.state import AppState


def test_liveness_names_versions_and_cpus(served: Callable[..., None]) -> None:
    async def scenario(client: httpx.AsyncClient, state: AppState) -> None:
        body = (await client.get("/healthz")).json()
        assert body["status"] == "ok"
        assert body["attnserve"] == __version__
        assert "CPUExecutionProvider" in body["available_providers"]
        assert body["onnxruntime"]
        assert body["gdal"]
        assert body["cpus"]["usable"] >= 1

    served(scenario)


def test_readiness_lists_models_and_turns_503_when_draining(served: Callable[..., None]) -> None:
    async def scenario(client: httpx.AsyncClient, state: AppState) -> None:
        ready = (await client.get("/readyz")).json()
        assert ready["ready"] is True
        assert ready["models"]["footprints:2.2.0"]["providers"] == ["CPUExecutionProvider"]
        state.draining = True
        draining = await client.get("/readyz")
        assert draining.status_code == 503
        assert draining.json()["ready"] is False
        # Liveness does not follow readiness: a draining server is alive.
        assert (await client.get("/healthz")).status_code == 200

    served(scenario)
