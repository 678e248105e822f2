"""Test scenes: real imagery tiled into a large GeoTIFF, and dated Sentinel-2-like stacks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from tests.helpers.geotiff import write_geotiff


def tile_scene(
    source: Path,
    repeat: int,
    out: Path,
    compress: str = "jpeg",
    predictor: int | None = None,
    tiled: bool = True,
) -> Path:
    """Write ``source`` repeated ``repeat x repeat`` times as one GeoTIFF.

    The result keeps the source's CRS and origin and pixel size, so its
    georeference is consistent: it simply extends right and down. Tiled 512 x
    512 by default; ``tiled=False`` writes GDAL's default strips instead.
    ``predictor`` (2 horizontal, 3 floating point) applies to deflate, LZW and zstd.
    """
    with rasterio.open(source) as src:
        data = src.read()
        profile = src.profile.copy()
    h, w = data.shape[1:]
    for key in ("nodata", "photometric", "blockxsize", "blockysize", "tiled"):
        profile.pop(key, None)
    profile.update(driver="GTiff", width=w * repeat, height=h * repeat, BIGTIFF="IF_SAFER")
    if tiled:
        profile.update(tiled=True, blockxsize=512, blockysize=512)
    if compress != "none":
        profile["compress"] = compress
    else:
        profile.pop("compress", None)
    if predictor is not None:
        profile["predictor"] = predictor
    if compress == "jpeg" and data.shape[0] == 3:
        profile["photometric"] = "ycbcr"
    with rasterio.open(out, "w", **profile) as dst:
        for i in range(repeat):
            for j in range(repeat):
                dst.write(data, window=Window(j * w, i * h, w, h))
    return out


def dated_stack(out_dir: Path, size: int, dates: list[str], seed: int = 0) -> list[Path]:
    """One 10-band Sentinel-2-like uint16 GeoTIFF per date (reflectance x 10000)."""
    rng = np.random.default_rng(seed)
    paths = []
    transform = from_origin(600000, 5000000, 10, 10)
    base = rng.uniform(300, 3000, (10, size, size)).astype(np.float32)
    for i, day in enumerate(dates):
        data = (base * (0.8 + 0.1 * i) + rng.normal(0, 50, base.shape)).clip(0, 10000)
        path = out_dir / f"s2_{day}.tif"
        write_geotiff(
            path,
            data.astype(np.uint16),
            transform=transform,
            tags=[{"DATE": day}] * 10,
            nodata=0,
            tiled=True,
            blockxsize=256,
            blockysize=256,
            compress="deflate",
        )
        paths.append(path)
    return paths
