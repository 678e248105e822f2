"""/metrics: the Prometheus text of this app's registry, requests counted per route."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from service.api.state import AppState


def test_requests_are_counted_by_route_template_not_by_id(served: Callable[..., None]) -> None:
    async def scenario(client: httpx.AsyncClient, state: AppState) -> None:
        for ref in ("footprints", "crops", "nope"):
            await client.get(f"/models/{ref}")
        resp = await client.get("/metrics")
        assert resp.headers["content-type"].startswith("text/plain; version=")
        lines = [line for line in resp.text.splitlines() if line.startswith("attnserve_")]
        found = 'attnserve_requests_total{model="",route="/models/{ref}",status="200"} 2.0'
        assert found in lines
        assert 'route="/models/{ref}",status="404"} 1.0' in resp.text
        assert "nope" not in resp.text
        assert 'attnserve_model_loaded{model="footprints",version="2.2.0"} 1.0' in lines

    served(scenario)
