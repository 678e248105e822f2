"""Intake of inputs by reference: small ones read whole and run as uploads, large ones as scenes.

An input is one file, or (a STAC Item's ``red``, ``green``, ``blue`` assets)
several single-band files stacked in order. A temporal model takes one input
per date.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import rasterio

from service.errors import InvalidInput, InvalidRaster, PayloadTooLarge, UnsupportedRaster
from service.pipeline.references import RangeSource, ReferencePath, read_all
from service.pipeline.scene_check import check_scene
from service.pipeline.scene_read import open_scene
from service.pipeline.stac_inputs import ReferenceQuery
from service.raster.decode import RasterInfo, check_limits, describe, open_geotiff
from service.runtime.repository import ServedModel

if TYPE_CHECKING:
    from service.pipeline.intake import Intake, SceneRequest, SyncRequest, UploadOptions


async def by_reference(
    intake: Intake, served: ServedModel, query: ReferenceQuery, options: UploadOptions
) -> SyncRequest | SceneRequest:
    """Inputs by reference (URLs or STAC) as a synchronous request or a scene job.

    Every URL passes the guard before anything is connected to (403). Inputs
    within the synchronous pixel limit and, together, the upload limit are read
    whole and run exactly as the same files uploaded; a larger input, or one
    with ``async``, becomes a scene job that reads it window by window where it
    is, never whole.
    """
    inputs, options = await asyncio.to_thread(
        query.resolve, intake.remote, served.manifest.input.bands, options
    )
    planned = await asyncio.to_thread(_plan, intake, served, inputs, options)
    if isinstance(planned, list):
        return await intake.upload(served, planned, options)
    return planned


def _plan(
    intake: Intake, served: ServedModel, inputs: list[list[str]], options: UploadOptions
) -> list[bytes] | SceneRequest:
    """The inputs' bytes to run as an upload, or a scene job reading them where they are."""
    sources: list[list[RangeSource]] = [
        [intake.remote.source(url) for url in files] for files in inputs
    ]
    limit = int(intake.settings.max_upload_mb * 2**20)
    if any(len(files) > 1 for files in inputs):
        parts = _read_whole(sources, limit)
        if parts is None:
            raise PayloadTooLarge(
                f"bands in separate files are read whole, and these are over "
                f"{intake.settings.max_upload_mb:g} MB together (ATTNSERVE_MAX_UPLOAD_MB): "
                "name an asset that holds all bands"
            )
        return parts
    paths: list[Path] = [intake.remote.path(files[0]) for files in inputs]
    infos = []
    for path in paths:
        try:
            with open_scene(path) as dataset:
                infos.append(describe(dataset))
                check_limits(infos[-1], intake.scene_limits)
        except InvalidRaster:
            refused = cast(ReferencePath, path).fs.error
            if refused is not None:
                raise refused from None  # the 403, 413 or 422 that GDAL saw as a failed open
            raise
    pixels = max(info.width * info.height for info in infos)
    if not served.task.dated:  # as for uploads: its size on the model's grid counts too
        pixels = max(pixels, intake.grid_plan(served, infos[0], options.gsd_m).model_pixels)
    if not options.run_async and pixels <= intake.sync_limits(served).max_pixels:
        parts = _read_whole(sources, limit)
        if parts is not None:
            return parts
    return _scene(intake, served, paths, infos, options)


def _read_whole(sources: list[list[RangeSource]], limit: int) -> list[bytes] | None:
    """Each input's bytes (bands in separate files stacked), or None past ``limit`` bytes."""
    parts: list[bytes] = []
    left = limit
    for files in sources:
        datas: list[bytes] = []
        for source in files:
            data = read_all(source, left)
            if data is None:
                return None
            left -= len(data)
            datas.append(data)
        parts.append(datas[0] if len(datas) == 1 else stack_bands(datas))
    return parts


def stack_bands(files: list[bytes]) -> bytes:
    """Single-band GeoTIFFs on one grid as one GeoTIFF of their bands, in order."""
    bands = []
    profile = None
    for data in files:
        with open_geotiff(data) as dataset:
            if dataset.count != 1:
                raise UnsupportedRaster("assets named band by band must each hold one band")
            grid = (dataset.width, dataset.height, dataset.crs, dataset.transform)
            if profile is None:
                first = grid
                profile = dataset.profile
            elif grid != first:
                raise UnsupportedRaster("the band assets must share one size, CRS and transform")
            bands.append(dataset.read(1))
    assert profile is not None
    profile.update(count=len(bands), driver="GTiff", tiled=False)
    for key in ("blockxsize", "blockysize", "compress", "photometric", "interleave"):
        profile.pop(key, None)
    out = io.BytesIO()
    with rasterio.open(out, "w", **profile) as target:
        target.write(np.stack(bands))
    return out.getvalue()


def _scene(
    intake: Intake,
    served: ServedModel,
    paths: list[Path],
    infos: list[RasterInfo],
    options: UploadOptions,
) -> SceneRequest:
    """A scene job that reads ``paths`` (references) where they are, checked as uploads are."""
    manifest = served.manifest
    if not served.task.dated and len(paths) != 1:
        raise InvalidInput(f"model {manifest.name} takes one image, got {len(paths)}")
    plan = None if served.task.dated else intake.grid_plan(served, infos[0], options.gsd_m)
    request = intake.scene_request(served, [], options, infos, plan, len(paths))
    check_scene(paths, manifest, intake.scene_limits, request.options.dates)
    request.references = [cast(ReferencePath, path).url for path in paths]
    return request
