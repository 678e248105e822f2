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
from rasterio.io import DatasetReader

from service.errors import InvalidInput, UnsupportedRaster
from service.memory import segmentation_bytes, series_bytes
from service.raster.decode import (
    DecodedRaster,
    Georeference,
    RasterInfo,
    RasterLimits,
    read_open,
)
from service.raster.resample import Resampling
from service.runtime.manifest import Manifest
from service.runtime.repository import ServedModel
from service.runtime.segmentation import context_px
from service.runtime.temporal import days_from_dates
from service.runtime.validation import check_layout, check_values


@dataclass
class RasterInput:
    """One image for a segmentation model: ``(C, H, W)`` values and where data is.

    ``resampling``: whether it runs on the model's grid (None: not planned,
    e.g. a JSON array, which has no georeference).
    """

    data: np.ndarray
    valid: np.ndarray | None
    georef: Georeference | None
    resampling: Resampling | None = None


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


def date_count(infos: list[RasterInfo], manifest: Manifest, given: int, limit: int) -> int:
    """Dates a set of dated uploads holds, from their headers; checked before any is decoded.

    Args:
        infos: the uploads' headers, in upload order.
        manifest: the temporal model's manifest.
        given: dates named in the dates field (0: none given).
        limit: the server's most dates per request.

    Raises:
        UnsupportedRaster: a band count that is no multiple of the model's bands,
            sizes that differ, or too many dates.
        InvalidInput: a dates field that does not match the uploads.
    """
    bands = len(manifest.input.bands)
    first = infos[0]
    for info in infos:
        if info.count % bands:
            check_layout(manifest, info.count, info.dtype)
        if (info.width, info.height) != (first.width, first.height):
            raise UnsupportedRaster("all dated images must have the same size")
    t = sum(info.count // bands for info in infos)
    check_layout(manifest, bands, first.dtype, dates=t, limit=limit)
    if given and given != t:
        raise InvalidInput(f"{given} dates given for {t} dated images of {bands} bands")
    return t


def outputs_per_unit(manifest: Manifest) -> float:
    """Bytes of every output per unit of input: per pixel, or per series row x date."""
    if manifest.task == "segmentation":
        total = 0.0
        for o in manifest.outputs:
            if len(o.shape) == 4:
                channels = o.shape[1] if isinstance(o.shape[1], int) else 1
                total += 4.0 * channels / o.stride**2
        return total
    # (N, heads, T) attention per date, (N, K) probabilities counted per date too.
    return sum(
        4.0 * (o.shape[1] if isinstance(o.shape[1], int) else 1)
        for o in manifest.outputs
        if len(o.shape) >= 2
    )


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


def read_open_image(
    dataset: DatasetReader, info: RasterInfo, manifest: Manifest, limits: RasterLimits
) -> RasterInput:
    """Decode an uploaded GeoTIFF for a segmentation model, checked against it.

    The caller opened it (:func:`~service.raster.decode.open_geotiff`) and
    described it, to choose between a synchronous answer and a scene job.
    """

    def check(info: RasterInfo) -> None:
        check_layout(manifest, info.count, info.dtype)

    raster = read_open(dataset, info, limits, check)
    values = raster.data if raster.valid is None else raster.data[:, raster.valid]
    check_values(manifest, values)
    return RasterInput(raster.data, raster.valid, raster.info.georef)


def read_open_dated(
    dataset: DatasetReader, info: RasterInfo, manifest: Manifest, limits: RasterLimits
) -> DecodedRaster:
    """Decode one dated upload for a temporal model: one date, or a stack of them.

    A stack holds ``T x C`` bands, date-major (all bands of the first date, then
    the next). The caller opened it (:func:`~service.raster.decode.open_geotiff`)
    and described it, to choose between a synchronous answer and a scene job.
    """
    bands = len(manifest.input.bands)

    def check(info: RasterInfo) -> None:
        if info.count % bands:
            check_layout(manifest, info.count, info.dtype)
        check_layout(manifest, bands, info.dtype, dates=max(1, info.count // bands))

    return read_open(dataset, info, limits, check)


def series_from_rasters(
    rasters: list[DecodedRaster], dates: list[date], manifest: Manifest
) -> SeriesInput:
    """Per-pixel series from decoded dated uploads (:func:`read_open_dated`).

    ``dates``: one per date, in upload order; empty to take them from the
    rasters' band tags.
    """
    bands = len(manifest.input.bands)
    first = rasters[0].info
    for other in rasters[1:]:
        if (other.info.georef.width, other.info.georef.height) != (first.width, first.height):
            raise UnsupportedRaster("all dated images must have the same size")
        if other.info.georef != first.georef:
            raise UnsupportedRaster("all dated images must share one CRS and transform")
    stack = np.concatenate([r.data for r in rasters]).astype(np.float32)
    t = stack.shape[0] // bands
    if not dates:
        tagged = [d for r in rasters for d in r.info.dates[::bands]]
        if len(tagged) != t:
            raise InvalidInput(
                "dates are missing: give a dates field (one ISO date per image or per "
                "stacked date) or DATE band tags"
            )
        dates = parse_dates(tagged)
    if len(dates) != t:
        raise InvalidInput(f"{len(dates)} dates given for {t} dated images of {bands} bands")
    check_layout(manifest, bands, first.dtype, dates=t)
    h, w = first.height, first.width
    cube = stack.reshape(t, bands, h, w)
    # A date is valid at a pixel when that date's image has data there.
    valid_tw = np.ones((t, h, w), dtype=bool)
    offset = 0
    for r in rasters:
        n_dates = r.data.shape[0] // bands
        if r.valid is not None:
            valid_tw[offset : offset + n_dates] &= r.valid
        offset += n_dates
    valid_tw &= np.isfinite(cube).all(axis=1)
    pixels = np.asarray(valid_tw.any(axis=0))
    series = cube[:, :, pixels].transpose(2, 0, 1)  # (N, T, C)
    valid = valid_tw[:, pixels].T
    check_values(manifest, series[valid])
    iso = [d.isoformat() for d in dates]
    return SeriesInput(
        series=np.ascontiguousarray(series),
        valid=np.ascontiguousarray(valid),
        days=days_from_dates(dates),
        dates=iso,
        ids=[],
        pixels=pixels,
        georef=first.georef,
    )


FLOAT32_MAX = float(np.finfo(np.float32).max)


def scene_bytes(served: ServedModel, tile: int, dates: int, in_flight: int) -> int:
    """Estimated peak bytes of a scene job's tiles of side ``tile`` (``dates``: temporal models).

    The batcher runs at most its batch of tiles (or series rows) at a time;
    up to ``in_flight`` tiles are read and wait for it meanwhile, each with
    its float32 values, a copy made for the model and the feed.
    """
    manifest = served.manifest
    bands = len(manifest.input.bands)
    act = served.session.activation_per_unit
    out = outputs_per_unit(manifest)
    if manifest.task == "segmentation":
        side = tile + 2 * context_px(manifest)
        rows = served.batcher.max_batch_size
        running = rows * side * side * (act + 3 * out + bands * 4)
        return int(running + in_flight * side * side * (3 * bands * 4 + 2))
    rows = min(tile * tile, served.batcher.max_batch_size)
    running = rows * dates * (act + bands * 4)
    return int(running + in_flight * tile * tile * dates * (3 * bands * 4 + 2 + 2 * out))


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
    return RasterInput(data, None, None)
