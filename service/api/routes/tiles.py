"""Maps of a job's results: XYZ tiles, TileJSON and a WMTS capabilities document."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.responses import Response

from service.api.deps import Job, State
from service.api.responses import JSONBody
from service.errors import NotFound
from service.jobs.record import JobRecord
from service.pipeline import views
from service.pipeline.points import point
from service.pipeline.tile_workers import TileWorkers
from service.pipeline.tiles import INPUT, TileAddress, tile_layers

router = APIRouter(prefix="/jobs", tags=["maps"])

MEDIA = {"png": "image/png", "webp": "image/webp"}
# What the image routes answer, and the format in their path.
IMAGE: dict[str, Any] = {
    "response_class": Response,
    "responses": {200: {"content": {media: {} for media in MEDIA.values()}}},
}
ImageFormat = Annotated[str, Path(pattern="^(png|webp)$", description="png or webp")]
# A finished job's results never change: clients may keep them until the job expires.
MAX_AGE_S = 86400


async def get_tiles(state: State) -> TileWorkers:
    """The app's tile workers (a pool started on first use, stopped with the app)."""
    return state.tiles


Tiles = Annotated[TileWorkers, Depends(get_tiles)]


def immutable(job: JobRecord) -> dict[str, str]:
    """Cache-Control of a finished job's results: kept until it expires, at most a day."""
    left = int(min(MAX_AGE_S, max(0.0, job.expires - time.time())))
    return {"Cache-Control": f"private, max-age={left}, immutable"}


def input_bands(job: JobRecord, state: State) -> tuple[str, ...]:
    """The names of the bands its model takes, by which an input's colours are picked."""
    try:
        served = state.repository.get(f"{job.model['name']}:{job.model['version']}")
    except (KeyError, NotFound):
        return ()  # no longer served: the input's first bands are shown
    return tuple(served.manifest.input.bands)


def base_url(request: Request) -> str:
    """The server's URL as the client reached it, without a trailing slash."""
    return str(request.base_url).rstrip("/")


@router.get("/{job_id}/tiles", summary="A job's map layers")
async def list_tiles(job: Job, request: Request) -> Response:
    """Every map layer of a job (each raster layer; per class or date where it has bands)."""
    views.require_done(job)
    base = base_url(request)
    layers = [
        {
            "name": tl.name,
            "title": tl.title,
            "legend": tl.legend(),
            "tilejson": f"{base}/jobs/{job.id}/tilejson/{tl.name}.json",
            "tiles": f"{base}/jobs/{job.id}/tiles/{tl.name}/{{z}}/{{x}}/{{y}}.png",
        }
        for tl in tile_layers(job)
    ]
    body = {
        "job_id": job.id,
        "layers": layers,
        "wmts": f"{base}/jobs/{job.id}/WMTSCapabilities.xml",
    }
    return JSONBody(body, headers=immutable(job))


@router.get(
    "/{job_id}/tiles/{layer}/{z}/{x}/{y}.{fmt}",
    summary="A Web Mercator tile of a job's layer",
    **IMAGE,
)
async def get_tile(
    job: Job,
    tiles: Tiles,
    layer: str,
    z: int,
    x: int,
    y: int,
    fmt: ImageFormat,
    state: State,
) -> Response:
    """256-pixel tile ``z/x/y`` (XYZ scheme): probabilities and attention in viridis over 0-1,
    class maps in the model's class colours, nodata and pixels off the raster transparent."""
    views.require_done(job)
    bands = input_bands(job, state) if layer == INPUT else ()
    data = await tiles.tile(job, TileAddress(layer, z, x, y, fmt, bands))
    return Response(data, media_type=MEDIA[fmt], headers=immutable(job))


@router.get(
    "/{job_id}/preview/{layer}.{fmt}",
    summary="A whole layer of a job as one image",
    **IMAGE,
)
async def get_preview(
    job: Job,
    tiles: Tiles,
    layer: str,
    fmt: ImageFormat,
    state: State,
) -> Response:
    """The layer in the job's own CRS, at most 1024 pixels a side, coloured as its tiles."""
    views.require_done(job)
    bands = input_bands(job, state) if layer == INPUT else ()
    data = await tiles.preview(job, layer, fmt, bands)
    return Response(data, media_type=MEDIA[fmt], headers=immutable(job))


@router.get("/{job_id}/tilejson/{layer}.json", summary="TileJSON of a job's layer")
async def get_tilejson(
    job: Job,
    tiles: Tiles,
    layer: str,
    request: Request,
    format: Annotated[str, Query(pattern="^(png|webp)$", description="png or webp")] = "png",
) -> Response:
    """TileJSON 3.0.0: tile URL template, bounds in EPSG:4326, zoom range, legend."""
    views.require_done(job)
    body = await tiles.tilejson(job, layer, base_url(request), format)
    return JSONBody(body, headers=immutable(job))


@router.get(
    "/{job_id}/WMTSCapabilities.xml",
    summary="WMTS capabilities of a job's layers",
    response_class=Response,
    responses={200: {"content": {"application/xml": {}}}},
)
async def get_wmts(job: Job, tiles: Tiles, request: Request) -> Response:
    """OGC WMTS 1.0.0 (RESTful), one layer per map layer, for QGIS, ArcGIS or GDAL."""
    views.require_done(job)
    xml = await tiles.wmts(job, base_url(request))
    return Response(xml, media_type="application/xml", headers=immutable(job))


@router.get("/{job_id}/point", summary="Every raster layer's values at one place")
async def get_point(
    job: Job,
    state: State,
    lon: Annotated[float | None, Query(ge=-180, le=180, description="longitude, EPSG:4326")] = None,
    lat: Annotated[float | None, Query(ge=-90, le=90, description="latitude, EPSG:4326")] = None,
    row: Annotated[int | None, Query(ge=0, le=10**7, description="pixel row")] = None,
    col: Annotated[int | None, Query(ge=0, le=10**7, description="pixel column")] = None,
) -> Response:
    """Values of each raster layer at ``lon``/``lat`` (or pixel ``row``/``col``): probability,
    class, attention, per-class probabilities and per-date attention; null where nodata.

    A place off the raster is a 422."""
    views.require_done(job)
    body = await asyncio.to_thread(point, job, state.store, lon, lat, row, col)
    return JSONBody(body, headers=immutable(job))
