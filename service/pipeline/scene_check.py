"""The checks a scene passes before its job is accepted: layout, size, georeference, scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader
from rasterio.windows import Window

from service.errors import InvalidRaster, UnsupportedRaster
from service.pipeline.scene_read import all_valid, open_scene
from service.pipeline.tasks import task_for
from service.raster.decode import UNREADABLE, RasterInfo, RasterLimits, check_limits, describe
from service.runtime.manifest import Manifest
from service.runtime.validation import check_values

# The value-scale check reads a grid of small windows: at most this many blocks
# of a file without overviews (a decimated read of a whole large JPEG-compressed
# scene decodes every block before the job is accepted).
SAMPLE_GRID = 4
SAMPLE_SIDE = 64
DECIMATED_MAX_BYTES = 64 * 2**20


def sample_values(ds: DatasetReader, info: RasterInfo) -> np.ndarray:
    """Valid values from across a scene, for the value-scale check.

    From the overviews where the file has them, else from a grid of small
    windows; a scene whose windows all miss its data is read decimated whole.
    """

    def valid_values(data: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
        values = data if valid is None else data[:, valid]
        values = values[np.isfinite(values)] if values.dtype.kind == "f" else values
        return values.reshape(-1)

    valid_everywhere = all_valid(ds)

    def decimated() -> np.ndarray:
        scale = max(1, max(info.width, info.height) // 256)
        shape = (info.count, max(1, info.height // scale), max(1, info.width // scale))
        valid = None if valid_everywhere else ds.dataset_mask(out_shape=shape[1:]) > 0
        return valid_values(ds.read(list(info.indexes) or None, out_shape=shape), valid)

    small = info.width * info.height <= (SAMPLE_GRID * SAMPLE_SIDE) ** 2 * 4
    # A decimated read of a file larger than GDAL's block cache decodes each
    # block once per band (a large stack of many float64 bands: minutes).
    if ds.overviews(1) or (small and info.decoded_bytes <= DECIMATED_MAX_BYTES):
        return decimated()
    parts = []
    height, width = min(SAMPLE_SIDE, info.height), min(SAMPLE_SIDE, info.width)
    for row in range(SAMPLE_GRID):
        for col in range(SAMPLE_GRID):
            # Centred in each cell of a SAMPLE_GRID x SAMPLE_GRID grid, inside the image.
            top = (2 * row + 1) * info.height // (2 * SAMPLE_GRID) - height // 2
            left = (2 * col + 1) * info.width // (2 * SAMPLE_GRID) - width // 2
            top = min(max(0, top), info.height - height)
            left = min(max(0, left), info.width - width)
            window = Window(left, top, width, height)
            valid = None if valid_everywhere else ds.dataset_mask(window=window) > 0
            parts.append(valid_values(ds.read(list(info.indexes) or None, window=window), valid))
    values = np.concatenate(parts)
    return values if values.size else decimated()


def check_scene(
    paths: list[Path], manifest: Manifest, limits: RasterLimits, dates: list[str]
) -> list[RasterInfo]:
    """Check scene files before accepting the job: layout, size, georeference, scale.

    Only headers and a sample of values per file are read (:func:`sample_values`).
    """
    task = task_for(manifest)
    infos: list[RasterInfo] = []
    for path in paths:
        with open_scene(path) as ds:
            info = describe(ds)
            check_limits(info, limits)
            task.check_scene_file(manifest, info)
            try:
                values = sample_values(ds, info)
            except RasterioError:
                raise InvalidRaster(UNREADABLE) from None
            check_values(manifest, values)
            infos.append(info)
    first = infos[0]
    for other in infos[1:]:
        if other.georef != first.georef:
            raise UnsupportedRaster("all dated images must share one size, CRS and transform")
    task.check_scene_dates(manifest, infos, dates)
    return infos
