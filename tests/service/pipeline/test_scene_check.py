"""The checks a scene passes before its job is accepted, read from a sample of it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from service.config import SHIPPED_MODELS
from service.errors import UnsupportedRaster
from service.pipeline.scene_check import check_scene
from service.raster.decode import RasterLimits
from service.runtime.manifest import Manifest
from service.runtime.session import ModelSession, SessionOptions

LIMITS = RasterLimits(max_pixels=10**9, max_bands=64, max_bytes=2**62)


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    path = next(SHIPPED_MODELS.glob("footprints-*.onnx"))
    return ModelSession(path, SessionOptions(providers=("CPUExecutionProvider",))).manifest


def _scene(
    path: Path, data: np.ndarray, valid: np.ndarray | None = None, overviews: bool = False
) -> Path:
    _, height, width = data.shape
    profile = {
        "driver": "GTiff", "width": width, "height": height, "count": data.shape[0],
        "dtype": "uint8", "crs": "EPSG:3857", "transform": from_origin(500_000, 4_000_000, 10, 10),
        "tiled": True, "blockxsize": 256, "blockysize": 256,
    }  # fmt: skip
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        if valid is not None:
            dst.write_mask(np.where(valid, 255, 0).astype(np.uint8))
    if overviews:
        with rasterio.open(path, "r+") as dst:
            dst.build_overviews([2, 4, 8])
    return path


def _image(height: int = 1500, width: int = 1300, high: int = 256) -> np.ndarray:
    return np.random.default_rng(0).integers(0, high, (3, height, width)).astype(np.uint8)


def test_a_scene_on_the_models_scale_is_accepted(tmp_path: Path, manifest: Manifest) -> None:
    infos = check_scene([_scene(tmp_path / "a.tif", _image())], manifest, LIMITS, [])
    assert (infos[0].width, infos[0].height) == (1300, 1500)


@pytest.mark.parametrize("overviews", [False, True], ids=["windows", "overviews"])
def test_values_scaled_to_0_1_are_refused(
    tmp_path: Path, manifest: Manifest, overviews: bool
) -> None:
    path = _scene(tmp_path / "a.tif", _image(high=2), overviews=overviews)
    with pytest.raises(UnsupportedRaster, match="look scaled to 0-1"):
        check_scene([path], manifest, LIMITS, [])


def test_data_only_where_no_sample_window_falls_is_still_found(
    tmp_path: Path, manifest: Manifest
) -> None:
    valid = np.zeros((1500, 1300), bool)
    valid[:40, :40] = True  # a corner the grid of windows misses
    path = _scene(tmp_path / "a.tif", _image(), valid)
    assert check_scene([path], manifest, LIMITS, [])


def test_a_scene_with_no_valid_pixel_is_refused(tmp_path: Path, manifest: Manifest) -> None:
    path = _scene(tmp_path / "a.tif", _image(), np.zeros((1500, 1300), bool))
    with pytest.raises(UnsupportedRaster, match="no valid pixels"):
        check_scene([path], manifest, LIMITS, [])


def test_a_long_thin_scene_is_sampled_inside_its_bounds(tmp_path: Path, manifest: Manifest) -> None:
    path = _scene(tmp_path / "a.tif", _image(height=70, width=9000))
    assert check_scene([path], manifest, LIMITS, [])
