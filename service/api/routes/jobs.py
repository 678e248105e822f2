"""Stored jobs and their predictions."""

from __future__ import annotations

from fastapi import APIRouter, Header, Query
from starlette.responses import Response

from service.api.deps import Job, State
from service.api.responses import geotiff_response, result_json, wants_geotiff
from service.pipeline import views

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get("/{job_id}", summary="A job's state and results")
async def get_job(job: Job, state: State) -> Response:
    """The same JSON ``/predict`` answered, for as long as the job is kept."""
    return result_json(views.job_json(job, state.store))


@router.get("/{job_id}/prediction", summary="A job's prediction")
async def get_prediction(
    job: Job,
    state: State,
    format: str | None = Query(None, description="json or geotiff"),
    accept: str | None = Header(None),
) -> Response:
    """The prediction as JSON, or as a GeoTIFF with prediction and attention bands."""
    if wants_geotiff(format, accept):
        data = views.geotiff(job, state.store, views.prediction_names(job))
        return geotiff_response(data, f"{job.id}-prediction.tif")
    name = next(la["name"] for la in job.layers if la["role"] == "prediction")
    return result_json(views.layer_json(job, state.store, name))
