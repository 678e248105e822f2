"""Turning request content into model inputs, checked against the manifest."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import numpy as np
import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from service.errors import InvalidInput
from service.memory import SceneLoad, segmentation_bytes, series_bytes
from service.raster.georef import Georeference
from service.raster.resample import Resampling
from service.runtime.manifest import Manifest
from service.runtime.repository import ServedModel
from service.runtime.tasks import inference_task
from service.runtime.temporal import days_from_dates
from service.runtime.validation import check_layout, check_values


@dataclass
class RasterInput:
    """One image for a segmentation model: ``(C, H, W)`` values and where data is.

    ``resampling``: whether it runs on the model's grid (None: not planned,
    e.g. a JSON array, which has no georeference). ``min_confidence``: the
    request's lowest top probability that gets a class (None: the manifest's).
    """

    data: np.ndarray
    valid: np.ndarray | None
    georef: Georeference | None
    resampling: Resampling | None = None
    min_confidence: float | None = None


@dataclass
class SeriesInput:
    """Series for a temporal model.

    Attributes:
        series: ``(N, T, C)`` float32 raw values.
        valid: ``(N, T)`` bool.
        days: ``(T,)`` float32 day of year.
        dates: ISO dates, one per T, when given as dates.
        ids: one id per series (parcels) or empty (pixels).
        pixels: for rasters, ``(H, W)`` bool of pixels that became series.
        georef: for rasters, the georeference.
    """

    series: np.ndarray
    valid: np.ndarray
    days: np.ndarray
    dates: list[str]
    ids: list[str]
    pixels: np.ndarray | None = None
    georef: Georeference | None = None


def pixel_series(
    cube: np.ndarray, valid_tw: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The series of the pixels with data on at least one date.

    Args:
        cube: ``(T, C, H, W)`` values per date and band.
        valid_tw: ``(T, H, W)`` bool, where each date has data.

    Returns:
        ``(N, T, C)`` values, ``(N, T)`` bool validity and the ``(H, W)`` bool
        pixels they came from, in row-major order.
    """
    pixels = np.asarray(valid_tw.any(axis=0))
    series = cube[:, :, pixels].transpose(2, 0, 1)
    valid = valid_tw[:, pixels].T
    return series, valid, pixels


# Longest dates field: 10 000 ISO dates with separators, far above any model's
# max_dates; longer text is refused before it is parsed.
MAX_DATES_TEXT = 128 * 1024


def parse_dates(text: str | list[str]) -> list[date]:
    """Dates from a JSON list or a comma-separated string of ISO dates."""
    items: list[str]
    if isinstance(text, list):
        items = text
    else:
        if len(text) > MAX_DATES_TEXT:
            raise InvalidInput(f"dates: the field is over {MAX_DATES_TEXT // 1024} KiB")
        stripped = text.strip()
        if stripped.startswith("["):
            try:
                # orjson bounds nesting depth (the stdlib parser recursed until
                # RecursionError on a field of 100 000 "[").
                loaded = orjson.loads(stripped)
            except (orjson.JSONDecodeError, RecursionError):
                raise InvalidInput("dates: not a valid JSON list") from None
            if not isinstance(loaded, list) or not all(isinstance(v, str) for v in loaded):
                raise InvalidInput("dates: expected a list of ISO dates")
            items = loaded
        else:
            items = [p.strip() for p in stripped.split(",") if p.strip()]
    try:
        return [date.fromisoformat(s) for s in items]
    except ValueError as exc:
        raise InvalidInput(f"dates: {exc}; use ISO dates like 2024-05-01") from None


def outputs_per_unit(manifest: Manifest) -> float:
    """Bytes of every output per unit of input: per pixel, or per series row x date."""
    return inference_task(manifest).outputs_per_unit(manifest)


def image_bytes(served: ServedModel, pixels: int, bands: int, itemsize: int) -> int:
    """Estimated peak bytes of one image of ``pixels`` through a segmentation model."""
    multiple = served.manifest.input.size_multiple or 1
    side = -(-int(pixels**0.5) // multiple) * multiple  # padding to the multiple, roughly
    padded = max(pixels, side * side)
    return segmentation_bytes(
        padded,
        bands,
        itemsize,
        served.session.activation_per_unit,
        outputs_per_unit(served.manifest),
    )


def stack_bytes(served: ServedModel, rows: int, dates: int, itemsize: int) -> int:
    """Estimated peak bytes of ``rows`` series (pixels or parcels) of ``dates`` dates."""
    return series_bytes(
        rows,
        dates,
        len(served.manifest.input.bands),
        itemsize,
        served.session.activation_per_unit,
        served.batcher.max_batch_size,
        outputs_per_unit(served.manifest),
    )


FLOAT32_MAX = float(np.finfo(np.float32).max)


def scene_bytes(served: ServedModel, tile: int, dates: int, in_flight: int) -> int:
    """Estimated peak bytes of a scene job's tiles of side ``tile`` (``dates``: temporal models)."""
    load = SceneLoad(
        served.session.activation_per_unit, served.batcher.max_batch_size, tile, dates, in_flight
    )
    return served.task.scene_bytes(served.manifest, load)


class Parcel(BaseModel):
    """One parcel's series: ``series[t][c]`` per date and band."""

    model_config = ConfigDict(extra="forbid")

    id: str | None = Field(None, max_length=200)
    series: list[list[float]] = Field(..., min_length=1)
    valid: list[bool] | None = None


class PredictJSON(BaseModel):
    """A JSON prediction request (small inputs)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = Field(..., min_length=1, max_length=200)
    format: str = "json"
    dates: list[date] | None = Field(None, max_length=4096)
    days: list[float] | None = Field(None, max_length=4096)
    parcels: list[Parcel] | None = Field(None, min_length=1)
    image: list[list[list[float]]] | None = None
    min_confidence: float | None = Field(None, ge=0, le=1)

    @field_validator("days")
    @classmethod
    def _days_fit_float32(cls, value: list[float] | None) -> list[float] | None:
        # The model takes float32 days: larger values would become infinite.
        if value is not None and any(abs(v) > FLOAT32_MAX for v in value):
            raise ValueError(f"days must be finite numbers within +-{FLOAT32_MAX:.4g}")
        return value

    @model_validator(mode="after")
    def _one_input(self) -> PredictJSON:
        if (self.parcels is None) == (self.image is None):
            raise ValueError("give exactly one of parcels (temporal models) or image")
        if self.parcels is not None and (self.dates is None) == (self.days is None):
            raise ValueError("parcels need exactly one of dates or days")
        return self


def validate_json(payload: object) -> PredictJSON:
    """Validate a decoded JSON body, with errors that name the field."""
    try:
        return PredictJSON.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise InvalidInput(f"{where}: {first['msg']}", errors=_brief(exc)) from None


def _brief(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]}
        for e in exc.errors()[:10]
    ]


def series_from_json(
    req: PredictJSON, manifest: Manifest, max_items: int, max_dates: int | None = None
) -> SeriesInput:
    """Parcels of a JSON request as model inputs (``max_dates``: the server's limit)."""
    parcels = req.parcels or []
    if len(parcels) > max_items:
        raise InvalidInput(f"{len(parcels)} parcels; at most {max_items} per request")
    bands = len(manifest.input.bands)
    if req.dates is not None:
        days = days_from_dates(req.dates)
        iso = [d.isoformat() for d in req.dates]
    else:
        days = np.asarray(req.days, dtype=np.float32)
        iso = []
    t = len(days)
    check_layout(manifest, bands, "float32", dates=t, limit=max_dates)
    series = np.empty((len(parcels), t, bands), dtype=np.float32)
    valid = np.ones((len(parcels), t), dtype=bool)
    for i, parcel in enumerate(parcels):
        if len(parcel.series) != t or any(len(row) != bands for row in parcel.series):
            raise InvalidInput(
                f"parcels.{i}.series must be {t} dates x {bands} bands "
                f"({', '.join(manifest.input.bands)})"
            )
        series[i] = parcel.series
        if not np.isfinite(series[i]).all():
            raise InvalidInput(
                f"parcels.{i}.series: values must be finite and within +-{FLOAT32_MAX:.4g}"
            )
        if parcel.valid is not None:
            if len(parcel.valid) != t:
                raise InvalidInput(f"parcels.{i}.valid must have {t} entries, one per date")
            valid[i] = parcel.valid
        if not valid[i].any():
            raise InvalidInput(f"parcels.{i} has no valid date")
    check_values(manifest, series[valid])
    ids = [p.id if p.id is not None else str(i) for i, p in enumerate(parcels)]
    return SeriesInput(series=series, valid=valid, days=days, dates=iso, ids=ids)


def image_from_json(req: PredictJSON, manifest: Manifest, max_pixels: int) -> RasterInput:
    """A small ``(C, H, W)`` image given as nested JSON lists."""
    image = req.image or []
    try:
        data = np.asarray(image, dtype=np.float32)
    except ValueError:
        raise InvalidInput("image must be a (bands, height, width) array of numbers") from None
    if data.ndim != 3 or 0 in data.shape:
        raise InvalidInput("image must be a (bands, height, width) array of numbers")
    if data.shape[1] * data.shape[2] > max_pixels:
        raise InvalidInput(f"image has more than {max_pixels} pixels; upload a GeoTIFF instead")
    check_layout(manifest, data.shape[0], manifest.input.accepted_dtypes[0])
    if not np.isfinite(data).all():
        raise InvalidInput(f"image: values must be finite and within +-{FLOAT32_MAX:.4g}")
    check_values(manifest, data)
    return RasterInput(data, None, None, min_confidence=req.min_confidence)
