"""Decoding GeoTIFF uploads into model inputs, checked against the model's manifest."""

from __future__ import annotations

from datetime import date

import numpy as np
from rasterio.io import DatasetReader

from service.errors import InvalidInput, UnsupportedRaster
from service.pipeline.inputs import RasterInput, SeriesInput, parse_dates, pixel_series
from service.raster.decode import DecodedRaster, RasterInfo, RasterLimits, read_open
from service.runtime.manifest import Manifest
from service.runtime.temporal import days_from_dates
from service.runtime.validation import check_layout, check_values


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


def read_open_image(
    dataset: DatasetReader, info: RasterInfo, manifest: Manifest, limits: RasterLimits
) -> RasterInput:
    """Decode an opened, described GeoTIFF upload for a segmentation model, checked against it."""

    def check(info: RasterInfo) -> None:
        check_layout(manifest, info.count, info.dtype)

    raster = read_open(dataset, info, limits, check)
    values = raster.data if raster.valid is None else raster.data[:, raster.valid]
    check_values(manifest, values)
    return RasterInput(raster.data, raster.valid, raster.info.georef)


def read_open_dated(
    dataset: DatasetReader, info: RasterInfo, manifest: Manifest, limits: RasterLimits
) -> DecodedRaster:
    """Decode one opened, described dated upload for a temporal model: one date, or a stack.

    A stack holds ``T x C`` bands, date-major (all bands of the first date, then
    the next).
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
    series, valid, pixels = pixel_series(cube, valid_tw)
    check_values(manifest, series[valid])
    return SeriesInput(
        series=np.ascontiguousarray(series),
        valid=np.ascontiguousarray(valid),
        days=days_from_dates(dates),
        dates=[d.isoformat() for d in dates],
        ids=[],
        pixels=pixels,
        georef=first.georef,
    )
