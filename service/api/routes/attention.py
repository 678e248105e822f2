"""Attention maps of stored jobs."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from starlette.responses import Response

from service.api.deps import Job, State
from service.api.downloads import file_response
from service.api.responses import geotiff_response, result_json, wants_geotiff
from service.errors import NotFound
from service.pipeline import views

router = APIRouter(prefix="/attention", tags=["attention"])


@dataclass
class AttentionQuery:
    """How attention is asked for: as JSON or a GeoTIFF, all heads or one."""

    format: str | None = Query(None, description="json or geotiff")
    head: int | None = Query(
        None,
        ge=0,
        le=1024,
        description="one attention head (temporal, token grid or multi-head spatial layers); "
        "by default their mean",
    )
    accept: str | None = Header(None)

    @property
    def geotiff(self) -> bool:
        """Whether the answer is a GeoTIFF (``format``, else the Accept header)."""
        return wants_geotiff(self.format, self.accept)


Asked = Annotated[AttentionQuery, Depends()]


@router.get("/{job_id}", summary="A job's attention layers")
async def list_attention(job: Job, state: State, asked: Asked) -> Response:
    """The layers with their URLs, or every spatial layer as one multiband GeoTIFF."""
    if asked.geotiff:
        views.require_done(job)
        names = views.spatial_attention_names(job)
        if not names:
            raise NotFound("this job has no spatial attention layers; ask for JSON")
        file = views.stored_file(job, names) if asked.head is None else None
        if file is not None:
            return await asyncio.to_thread(file_response, state.store, job, file)
        data = await asyncio.to_thread(views.geotiff, job, state.store, names, asked.head)
        return geotiff_response(data, f"{job.id}-attention.tif")
    views.require_done(job)
    return result_json(views.attention_listing(job))


@router.get("/{job_id}/{layer}", summary="One attention layer")
async def get_layer(job: Job, layer: str, state: State, asked: Asked) -> Response:
    """One layer's weights as JSON, or as a GeoTIFF for raster layers."""
    views.require_done(job)
    entry = job.layer(layer)
    if entry.role != "attention":
        raise NotFound(f"{layer!r} is not an attention layer")
    if asked.geotiff:
        views.require_raster(entry)
        data = await asyncio.to_thread(views.geotiff, job, state.store, [layer], asked.head)
        return geotiff_response(data, f"{job.id}-{layer}.tif")
    body = await asyncio.to_thread(views.layer_json, job, state.store, layer, asked.head)
    return result_json(body)
