"""Prometheus scrape endpoint."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from service.api.deps import State

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(state: State) -> Response:
    """Every metric in Prometheus' text format."""
    state.metrics.jobs_stored.set(state.store.count)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
