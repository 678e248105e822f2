"""Ground resolution, the model-grid plan, and resampling there and back."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.crs import CRS
from rasterio.transform import Affine

from service.errors import PayloadTooLarge
from service.raster.decode import RasterLimits
from service.raster.georef import Georeference
from service.raster.gsd import ground_resolution
from service.raster.resample import (
    NOT_GEOREFERENCED,
    ModelGridSource,
    RowsBack,
    check_grid,
    input_valid_rows,
    plan_resampling,
)
from service.runtime.tiling import TileGrid

UTM40 = CRS.from_epsg(32640).to_wkt()
WGS84 = CRS.from_epsg(4326).to_wkt()
# Near Dubai, close to zone 40's central meridian: grid metres are ground metres.
ORIGIN = (326_000.0, 2_788_000.0)
LOCAL_CS = (
    'LOCAL_CS["arbitrary",LOCAL_DATUM["x",32767],UNIT["metre",1],AXIS["X",EAST],AXIS["Y",NORTH]]'
)


def _utm(pixel: float, width: int = 100, height: int = 80) -> Georeference:
    return Georeference(UTM40, (pixel, 0, ORIGIN[0], 0, -pixel, ORIGIN[1]), width, height)


@pytest.mark.parametrize(
    "georef",
    [
        None,
        Georeference(None, (0.5, 0, 0, 0, -0.5, 0), 10, 10),
        Georeference(LOCAL_CS, (0.5, 0, 0, 0, -0.5, 0), 10, 10),
        Georeference(UTM40, (1e-300, 0, ORIGIN[0], 0, -1e-300, ORIGIN[1]), 10, 10),
        Georeference(UTM40, (1e300, 0, ORIGIN[0], 0, -1e300, ORIGIN[1]), 10, 10),
        Georeference(WGS84, (1e300, 0, 0, 0, -1e300, 0), 10, 10),
        Georeference(UTM40, (math.nan, 0, ORIGIN[0], 0, -0.5, ORIGIN[1]), 10, 10),
        Georeference(UTM40, (0.5, 0, math.inf, 0, -0.5, ORIGIN[1]), 10, 10),
        Georeference(UTM40, (0.0, 0, ORIGIN[0], 0, 0.0, ORIGIN[1]), 10, 10),
    ],
    ids=["none", "no-crs", "local-cs", "tiny", "huge", "huge-deg", "nan", "inf", "singular"],
)
def test_odd_georeferences_count_as_none(georef: Georeference | None) -> None:
    assert ground_resolution(georef) is None
    plan = plan_resampling(georef, 0.5, 1.25)
    assert not plan.applied
    assert plan.reason == NOT_GEOREFERENCED


def test_within_tolerance_runs_as_is() -> None:
    plan = plan_resampling(_utm(0.6), 0.5, 1.25)
    assert not plan.applied
    assert "within 1.25x" in (plan.reason or "")
    assert plan.to_json()["input_gsd_m"][0] == pytest.approx(0.6, rel=1e-3)
    # The same input with a stricter tolerance is resampled.
    assert plan_resampling(_utm(0.6), 0.5, 1.1).applied


def test_a_model_without_gsd_runs_everything_as_is() -> None:
    plan = plan_resampling(_utm(0.25), None, 1.25)
    assert not plan.applied
    assert "gsd_m" in (plan.reason or "")


def test_the_model_grid_keeps_the_footprint() -> None:
    fine = plan_resampling(_utm(0.25, 100, 80), 0.5, 1.25)
    assert fine.applied
    assert fine.method == "average"
    assert (fine.model_width, fine.model_height) == (50, 40)
    coarse = plan_resampling(_utm(1.0, 100, 80), 0.5, 1.25)
    assert coarse.method == "bilinear"
    assert (coarse.model_width, coarse.model_height) == (200, 160)
    body = coarse.to_json()
    assert body["factor"] == [2.0, 2.0]
    assert body["model_grid"] == {"width": 200, "height": 160}


def test_to_model_averages_valid_pixels_only() -> None:
    plan = plan_resampling(_utm(0.25, 4, 2), 0.5, 1.25)
    data = np.array([[[10, 20, 30, 40], [10, 20, 0, 0]]], dtype=np.uint8)
    valid = np.array([[True, True, True, True], [True, True, False, False]])
    out, valid_m = plan.to_model(data, valid)
    assert out.shape == (1, 1, 2)
    # The nodata zeros do not pull the second pixel down.
    np.testing.assert_allclose(out[0, 0], [15, 35])
    assert valid_m is not None
    assert valid_m.all()
    # A model pixel less than half covered by data is no data.
    valid[0, 2] = False
    _, valid_m = plan.to_model(data, valid)
    assert valid_m is not None
    assert valid_m.tolist() == [[True, False]]


def test_outputs_go_back_to_the_input_grid_with_nodata() -> None:
    plan = plan_resampling(_utm(1.0, 6, 4), 0.5, 1.25)
    model = np.linspace(0, 1, 12 * 8, dtype=np.float32).reshape(1, 8, 12)
    model[0, :2, :2] = np.nan
    back = plan.to_input(model)
    assert back.shape == (1, 4, 6)
    # A pixel whose four model pixels are all nodata stays nodata; its
    # neighbours are made from the valid ones only.
    assert np.isnan(back[0, 0, 0])
    assert np.isfinite(back[0, 1:, 1:]).all()
    assert np.nanmin(back) >= 0
    assert np.nanmax(back) <= 1


def _write(path: Path, data: np.ndarray, georef: Georeference, nodata: float | None) -> Path:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=georef.width,
        height=georef.height,
        count=data.shape[0],
        dtype=data.dtype,
        crs=georef.crs,
        transform=Affine(*georef.transform),
        nodata=nodata,
    ) as ds:
        ds.write(data)
    return path


@pytest.mark.parametrize("pixel", [0.25, 0.8])
def test_tiles_read_on_the_model_grid_equal_the_whole_image(tmp_path: Path, pixel: float) -> None:
    rng = np.random.default_rng(3)
    georef = _utm(pixel, 150, 110)
    data = rng.integers(1, 255, (3, 110, 150), dtype=np.uint8)
    data[:, 40:60, 10:90] = 0  # nodata
    path = _write(tmp_path / "in.tif", data, georef, 0)
    plan = plan_resampling(georef, 0.5, 1.25)
    whole, whole_valid = plan.to_model(data, (data != 0).all(axis=0))
    assert whole_valid is not None
    with rasterio.open(path) as ds:
        source = ModelGridSource(ds, plan, all_valid=False)
        grid = TileGrid(plan.model_height, plan.model_width, 32, 8)
        for tile in grid:
            y0, x0 = tile.y, tile.x
            y1 = min(y0 + tile.size, plan.model_height)
            x1 = min(x0 + tile.size, plan.model_width)
            part, valid = source.read(y0, y1, x0, x1)
            np.testing.assert_array_equal(valid, whole_valid[y0:y1, x0:x1])
            np.testing.assert_allclose(
                np.where(valid, part, 0), np.where(valid, whole[:, y0:y1, x0:x1], 0), rtol=1e-6
            )


@pytest.mark.parametrize("pixel", [0.25, 1.3])
def test_rows_back_block_by_block_equal_the_whole(pixel: float) -> None:
    plan = plan_resampling(_utm(pixel, 70, 90), 0.5, 1.25)
    rng = np.random.default_rng(5)
    model = rng.random((2, plan.model_height, plan.model_width), dtype=np.float32)
    model[:, 5:9, 3:20] = np.nan
    whole = plan.to_input(model)
    back = RowsBack(plan)
    parts: list[tuple[int, np.ndarray]] = []
    bounds = sorted({0, 7, 8, 30, plan.model_height // 2, plan.model_height})
    for start, stop in itertools.pairwise(bounds):
        parts += back.push(start, model[:, start:stop])
    assert [p[0] for p in parts] == sorted(p[0] for p in parts)
    joined = np.concatenate([p[1] for p in parts], axis=1)
    assert joined.shape == whole.shape
    np.testing.assert_allclose(joined, whole, rtol=1e-6)


def test_input_validity_by_rows(tmp_path: Path) -> None:
    data = np.full((1, 6, 5), 2.0, dtype=np.float32)
    data[0, 1, 1] = np.nan
    data[0, 4, 2] = -1
    path = _write(tmp_path / "f.tif", data, _utm(0.5, 5, 6), -1)
    with rasterio.open(path) as ds:
        valid = input_valid_rows(ds, 1, 4, all_valid=False)
    assert valid is not None
    assert valid.shape == (4, 5)
    assert not valid[0, 1]
    assert not valid[3, 2]
    assert valid.sum() == 18


def test_an_absurd_model_grid_is_refused() -> None:
    # A 300 m Landsat image for a 0.5 m model: 600 times larger along each axis.
    landsat = Georeference(UTM40, (300, 0, ORIGIN[0], 0, -300, ORIGIN[1]), 791, 718)
    assert not plan_resampling(landsat, 0.5, 1.25).applied  # past the default 8x: as sent
    plan = plan_resampling(landsat, 0.5, 1.25, max_factor=1e6)
    assert plan.applied
    assert plan.model_pixels > 10**11
    with pytest.raises(PayloadTooLarge, match=r"model's 0.5 m per pixel.*300 x 300 m"):
        check_grid(plan, RasterLimits(30_000**2, 512, 2**62))
    check_grid(plan_resampling(_utm(0.25), 0.5, 1.25), RasterLimits(64 * 64, 512, 2**62))
