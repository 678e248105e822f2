"""Stored jobs: state and progress, results, footprints, cancellation."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Header, Query
from starlette.responses import Response

from service.api.deps import Job, State
from service.api.downloads import file_response
from service.api.responses import geotiff_response, result_json, wants_geotiff
from service.errors import NotFound
from service.pipeline import views
from service.pipeline.footprints import VECTOR_FORMATS, FootprintOptions, vector_format

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get("/{job_id}", summary="A job's state, progress and results")
async def get_job(job: Job, state: State) -> Response:
    """State (queued, running, done, failed, cancelled), progress, ETA, error, results."""
    return result_json(await state.jobs.describe(job))


@router.delete("/{job_id}", summary="Cancel a job, or delete a finished one")
async def delete_job(job: Job, state: State) -> Response:
    """A queued or running job is cancelled; a finished job and its files are deleted."""
    if job.finished:
        await asyncio.to_thread(state.store.delete, job.id)
        state.footprints.forget(job.id)
        return result_json({"job_id": job.id, "state": "deleted"})
    record = await asyncio.to_thread(state.jobs.cancel, job)
    return result_json(
        {"job_id": record.id, "state": "cancelling" if record.state == "running" else record.state}
    )


@router.get("/{job_id}/prediction", summary="A job's prediction")
async def get_prediction(
    job: Job,
    state: State,
    format: str | None = Query(None, description="json or geotiff"),
    accept: str | None = Header(None),
) -> Response:
    """The prediction as JSON, or as a GeoTIFF (with attention bands for single images)."""
    views.require_done(job)
    names = views.prediction_names(job)
    if wants_geotiff(format, accept):
        file = views.stored_file(job, names)
        if file is not None:
            return await asyncio.to_thread(file_response, state.store, job, file)
        data = await asyncio.to_thread(views.geotiff, job, state.store, names)
        return geotiff_response(data, f"{job.id}-prediction.tif")
    name = next(la.name for la in job.layers if la.role == "prediction")
    return result_json(await asyncio.to_thread(views.layer_json, job, state.store, name))


@router.get("/{job_id}/files/{name}", summary="One stored output file of a scene job")
async def get_file(job: Job, name: str, state: State) -> Response:
    """A Cloud-Optimized GeoTIFF written by a scene job (listed in the job's links)."""
    views.require_done(job)
    if name not in views.output_files(job):
        raise NotFound(f"job has no output file {name!r}")
    return await asyncio.to_thread(file_response, state.store, job, name)


@router.get(
    "/{job_id}/footprints",
    summary="Building footprints: GeoJSON, GeoPackage, FlatGeobuf",
    response_class=Response,
    responses={200: {"content": {f.media_type: {} for f in VECTOR_FORMATS.values()}}},
)
async def get_footprints(
    job: Job,
    state: State,
    threshold: float = Query(0.5, gt=0, lt=1, description="probability of a building pixel"),
    min_area_px: float = Query(16, ge=0, le=1e9, description="smallest polygon, in pixels"),
    simplify_px: float = Query(1.0, ge=0, le=1000, description="simplification, in pixels"),
    crs: str = Query(
        "EPSG:4326", pattern="^(EPSG:4326|native)$", description="EPSG:4326 or native"
    ),
    format: str | None = Query(None, description="geojson (default), gpkg or fgb"),
    accept: str | None = Header(None),
) -> Response:
    """Polygons of the stitched probability raster, each with mean probability and attention.

    RFC 7946 GeoJSON in EPSG:4326 by default; ``crs=native`` keeps the input's CRS.
    ``format=gpkg`` or ``fgb`` (or an Accept header of their media types) gives the
    same features and attributes as a GeoPackage or FlatGeobuf.
    More than ``ATTNSERVE_FOOTPRINTS_MAX_FEATURES`` polygons, or longer than
    ``ATTNSERVE_FOOTPRINTS_TIMEOUT_S``, is a 422 that says which parameters to raise.
    """
    kind = vector_format(format, accept)
    views.require_done(job)
    if not views.has_footprints(job):
        raise NotFound("footprints exist for segmentation jobs only")
    options = FootprintOptions(threshold, min_area_px, simplify_px, native_crs=crs == "native")
    # Made in a worker process, bounded in polygons and time, kept per parameters.
    data = await state.footprints.download(job, options, kind)
    return Response(
        data,
        media_type=kind.media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{job.id}-footprints.{kind.extension}"',
            "Cache-Control": "no-store",
        },
    )
