"""A job as a STAC Item, for catalogues, QGIS and Python."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.api.deps import Job, State
from service.api.responses import JSONBody
from service.api.routes.tiles import base_url, immutable
from service.errors import NotFound
from service.pipeline import views
from service.pipeline.stac import stac_item
from service.runtime.manifest import Manifest

router = APIRouter(prefix="/jobs", tags=["stac"])


@router.get(
    "/{job_id}/stac",
    summary="A job as a STAC Item",
    responses={200: {"content": {"application/geo+json": {}}}},
)
async def get_stac(job: Job, state: State, request: Request) -> Response:
    """STAC 1.1 Item: the input's outline and dates, projection, raster bands, classes,
    the model (ML-model extension) and the job's files as assets."""
    views.require_done(job)
    manifest: Manifest | None
    try:
        manifest = state.repository.get(f"{job.model['name']}:{job.model['version']}").manifest
    except NotFound:
        manifest = None  # no longer served: the Item says less about it
    body = await asyncio.to_thread(
        stac_item, job, manifest, base_url(request), state.settings.model_downloads
    )
    return JSONBody(body, media_type="application/geo+json", headers=immutable(job))
