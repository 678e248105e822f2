"""Scene outputs: the COGs a RasterSink finishes carry the overviews GDAL's COG driver would."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_validate

from service.raster.cog import RasterSink, overview_factors, read_band
from service.raster.georef import Georeference

GEOREF = Georeference(
    crs=rasterio.crs.CRS.from_epsg(32631).to_wkt(),
    transform=(10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0),
    width=2048,
    height=1536,
)


@pytest.mark.parametrize(
    ("width", "height", "factors"),
    [
        (512, 512, []),
        (300, 40, []),
        (513, 10, [2]),
        (1024, 1024, [2]),
        (1025, 700, [2]),
        (1026, 700, [2, 4]),
        (4096, 4096, [2, 4, 8]),
        (8192, 8192, [2, 4, 8, 16]),
        (100, 30000, [2, 4, 8, 16, 32, 64]),
    ],
)
def test_overview_factors_halve_until_one_block(
    width: int, height: int, factors: list[int]
) -> None:
    assert overview_factors(width, height) == factors


def _reference(tmp_path: Path, data: np.ndarray, sink_kwargs: dict[str, Any]) -> Path:
    """The same values made into a COG by the COG driver building its own overviews."""
    dtype = sink_kwargs.get("dtype", "float32")
    scaled = sink_kwargs.get("scaled", False)
    nodata = sink_kwargs.get("nodata")
    profile: dict[str, Any] = {
        "driver": "GTiff",
        "width": GEOREF.width,
        "height": GEOREF.height,
        "count": data.shape[0],
        "dtype": dtype,
        "crs": rasterio.crs.CRS.from_wkt(GEOREF.crs or ""),
        "transform": rasterio.Affine(*GEOREF.transform),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
    }
    valid = np.isfinite(data).all(axis=0)
    if dtype == "float32":
        profile["nodata"] = float("nan")
        values = data
    elif scaled:
        values = np.clip(np.nan_to_num(data) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    else:
        profile["nodata"] = nodata
        values = np.where(np.isfinite(data), data, nodata).astype(np.uint8)
    plain = tmp_path / "plain.tif"
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(plain, "w", **profile) as dst:
        dst.write(values)
        if dtype == "uint8" and scaled:
            dst.write_mask(np.where(valid, 255, 0).astype(np.uint8))
    resampling = sink_kwargs.get("resampling", "average").upper()
    options = {"BLOCKSIZE": 512, "COMPRESS": "DEFLATE", "OVERVIEW_RESAMPLING": resampling}
    reference = tmp_path / "reference.tif"
    rasterio.shutil.copy(plain, reference, driver="COG", **options)
    return reference


@pytest.mark.parametrize(
    "sink_kwargs",
    [
        {},
        {"dtype": "uint8", "scaled": True},
        {"dtype": "uint8", "nodata": 255, "resampling": "mode"},
    ],
    ids=["float-nan", "uint8-mask", "classes-mode"],
)
def test_finished_cog_matches_the_cog_drivers_own_overviews(
    tmp_path: Path, sink_kwargs: dict[str, Any]
) -> None:
    rng = np.random.default_rng(3)
    data = rng.random((2, GEOREF.height, GEOREF.width)).astype(np.float32)
    if sink_kwargs.get("dtype") == "uint8" and not sink_kwargs.get("scaled"):
        data = np.floor(data * 5)
    data[:, 100:180, :] = np.nan  # nodata rows, and scattered nodata pixels
    data[:, ::7, ::11] = np.nan
    sink = RasterSink(tmp_path / "out.tif", GEOREF, ["a", "b"], **sink_kwargs)
    for row in range(0, GEOREF.height, 300):  # rows in blocks, as a scene writes them
        sink.write(row, data[:, row : row + 300])
    out = sink.finish()
    assert not sink.partial.exists()
    assert cog_validate(out)[0]
    reference = _reference(tmp_path, data, sink_kwargs)
    with rasterio.open(out) as got, rasterio.open(reference) as want:
        assert got.crs == want.crs
        assert got.transform == want.transform
        assert got.overviews(1) == want.overviews(1) == [2, 4]
        assert got.mask_flag_enums == want.mask_flag_enums
        np.testing.assert_array_equal(got.read(masked=True), want.read(masked=True))
    for level in range(2):
        with (
            rasterio.open(out, overview_level=level) as got,
            rasterio.open(reference, overview_level=level) as want,
        ):
            a, b = got.read(masked=True), want.read(masked=True)
            np.testing.assert_array_equal(np.ma.getmaskarray(a), np.ma.getmaskarray(b))
            np.testing.assert_array_equal(a.filled(0), b.filled(0))


BIG = Georeference(crs=GEOREF.crs, transform=GEOREF.transform, width=4096, height=4096)


@pytest.mark.parametrize(
    "sink_kwargs",
    [{}, {"dtype": "uint8", "scaled": True}, {"dtype": "uint8", "nodata": 255}],
    ids=["float-nan", "uint8-mask", "classes"],
)
def test_a_mostly_empty_output_takes_disk_for_its_data_only(
    tmp_path: Path, sink_kwargs: dict[str, Any]
) -> None:
    sink = RasterSink(tmp_path / "out.tif", BIG, ["a"], **sink_kwargs)
    patch = np.full((1, 200, 300), 0.4, np.float32)
    for row in range(0, BIG.height, 384):  # row blocks as a scene writes them, mostly nodata
        block = np.full((1, min(384, BIG.height - row), BIG.width), np.nan, np.float32)
        if row == 768:  # a patch across a file block's edge (rows 900-1100)
            block[:, 132:332, 1000:1300] = patch
        sink.write(row, block)
    # The patch touches 4 of the 64 file blocks (1 MiB each); a dense partial would
    # take all 64 MiB now.
    assert sink.disk_bytes() <= 5 * 2**20
    assert sink.data_share < 0.1
    out = sink.finish()
    assert not sink.partial.exists()
    assert cog_validate(out)[0]
    assert out.stat().st_size < 2**20
    with rasterio.open(out) as got:
        assert got.overviews(1) == [2, 4, 8]
        values = got.read(1, masked=True)
        assert values.count() == 200 * 300
        want = 0.4 if sink.dtype == "float32" else round(0.4 * 255) if sink.scaled else 0
        assert np.all(values[900:1100, 1000:1300] == np.float32(want))


def test_abort_leaves_no_file_behind(tmp_path: Path) -> None:
    sink = RasterSink(tmp_path / "out.tif", BIG, ["a"])
    sink.write(0, np.full((1, 512, BIG.width), 0.5, np.float32))
    assert sink.partial.exists()
    sink.abort()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "sink_kwargs", [{}, {"dtype": "uint8", "scaled": True}], ids=["streamed", "gdal"]
)
def test_writing_and_finishing_a_full_output_leave_other_threads_running(
    tmp_path: Path, sink_kwargs: dict[str, Any]
) -> None:
    sink = RasterSink(tmp_path / "out.tif", GEOREF, ["a", "b"], **sink_kwargs)
    assert sink.streamed == (not sink_kwargs)
    rng = np.random.default_rng(5)
    stalls: list[float] = []
    done = threading.Event()

    def tick() -> None:
        while not done.is_set():
            began = time.perf_counter()
            time.sleep(0.01)
            stalls.append(time.perf_counter() - began - 0.01)

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        # A streamed output compresses its tiles as the rows come.
        for row in range(0, GEOREF.height, 512):
            sink.write(row, rng.random((2, 512, GEOREF.width), dtype=np.float32))
        out = sink.finish()
    finally:
        done.set()
        ticker.join()
    with rasterio.open(out) as got:
        assert got.overviews(1) == [2, 4]
    # GDAL's overview builder holds the GIL: in-process it stalled others for seconds.
    assert max(stalls) < 0.3


SMALL = Georeference(crs=GEOREF.crs, transform=GEOREF.transform, width=600, height=520)


@pytest.mark.parametrize(
    ("sink_kwargs", "categorical"),
    [({}, False), ({"dtype": "uint8", "scaled": True}, False), ({"dtype": "uint8"}, True)],
    ids=["float-nan", "uint8-scaled", "classes"],
)
def test_read_band_gives_back_written_values_with_nan_nodata(
    tmp_path: Path, sink_kwargs: dict[str, Any], categorical: bool
) -> None:
    rng = np.random.default_rng(11)
    data = rng.random((2, SMALL.height, SMALL.width)).astype(np.float32)
    if categorical:
        data = np.floor(data * 4)
    data[:, 40:60, :] = np.nan
    sink = RasterSink(tmp_path / "out.tif", SMALL, ["a", "b"], nodata=255, **sink_kwargs)
    sink.write(0, data)
    out = sink.finish()
    # Scaled uint8 holds 1/255 steps: the values come back within half a step.
    atol = 0.5 / 255 if sink_kwargs.get("scaled") else 0.0
    with rasterio.open(out) as ds:
        window = Window(10, 30, 200, 50)
        got = read_band(ds, 2, categorical, window=window)
        assert got.dtype == np.float32
        assert got.shape == (50, 200)
        want = data[1, 30:80, 10:210]
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], atol=atol)
        small = read_band(ds, 1, categorical, out_shape=(130, 150))
        assert small.shape == (130, 150)
        # Decimated by 4 (from an overview where there is one): the nodata rows stay NaN.
        assert np.isnan(small[11:15]).all()
        assert not np.isnan(small[:10]).any()
        # Class codes stay codes (0-3), scaled values come back to 0-1.
        assert np.nanmax(small) > (2 if categorical else 0.9)
        assert np.nanmax(small) <= (3 if categorical else 1)


def test_a_class_cog_keeps_its_colour_table_and_class_names(tmp_path: Path) -> None:
    colours = {0: (31, 120, 180, 255), 1: (51, 160, 44, 255), 2: (227, 26, 28, 255)}
    sink = RasterSink(
        tmp_path / "class.tif",
        GEOREF,
        ["class"],
        dtype="uint8",
        nodata=255,
        resampling="mode",
        band_tags=[{"CLASSES": "water,forest,built"}],
        colormap=colours,
    )
    data = np.floor(np.random.default_rng(3).random((1, GEOREF.height, GEOREF.width)) * 3)
    data[:, :100] = np.nan
    sink.write(0, data.astype(np.float32))
    out = sink.finish()
    valid, errors, _ = cog_validate(out)
    assert valid, errors
    with rasterio.open(out) as ds:
        assert ds.colorinterp[0] == rasterio.enums.ColorInterp.palette
        assert {i: ds.colormap(1)[i] for i in colours} == colours
        assert ds.tags(1)["CLASSES"] == "water,forest,built"
        assert ds.overviews(1)
        assert (ds.read(1, window=Window(0, 0, 50, 100)) == 255).all()


def test_the_compression_level_is_the_sinks_and_bounded(tmp_path: Path) -> None:
    small = Georeference(GEOREF.crs, GEOREF.transform, 512, 512)
    rng = np.random.default_rng(5)
    # Smooth values with noise, as attention maps are: room for a better level to gain.
    values = np.linspace(0, 1, 512, dtype=np.float32)[None, None, :] * np.ones((1, 512, 1))
    values = (values + rng.normal(0, 0.01, values.shape)).astype(np.float32)
    sizes = {}
    for level in (1, 9):
        sink = RasterSink(
            tmp_path / f"zstd-{level}.tif", small, ["a"], compress="zstd", level=level
        )
        sink.write(0, values)
        sizes[level] = sink.finish().stat().st_size
        with rasterio.open(sink.path) as ds:
            np.testing.assert_array_equal(ds.read(1), values[0])  # lossless at any level
    assert sizes[9] < sizes[1]
    with pytest.raises(ValueError, match="level must be 1 to 9"):
        RasterSink(tmp_path / "x.tif", small, ["a"], level=10)


@pytest.mark.parametrize(
    "sink_kwargs",
    [{}, {"dtype": "uint8", "scaled": True}, {"dtype": "uint8", "nodata": 255}],
    ids=["float-nan", "uint8-mask", "classes"],
)
def test_windows_written_piece_by_piece_make_the_same_cog_as_whole_rows(
    tmp_path: Path, sink_kwargs: dict[str, Any]
) -> None:
    rng = np.random.default_rng(3)
    data = np.floor(rng.random((2, SMALL.height, SMALL.width)) * 4).astype(np.float32)
    data[:, :, 512:] = np.nan  # the right-hand file blocks hold no data
    whole = RasterSink(tmp_path / "whole.tif", SMALL, ["a", "b"], **sink_kwargs)
    whole.write(0, data)
    pieces = RasterSink(tmp_path / "pieces.tif", SMALL, ["a", "b"], **sink_kwargs)
    # Windows that start and end inside file blocks, as blended tile columns come.
    for row, stop in ((0, 200), (200, SMALL.height)):
        for col, right in ((0, 90), (90, 530), (530, SMALL.width)):
            pieces.write(row, data[:, row:stop, col:right], first_col=col)
    # File blocks are 512 px: 2 x 2 here, and only the left column holds data.
    assert pieces.data_share == whole.data_share == 0.5
    with rasterio.open(whole.finish()) as a, rasterio.open(pieces.finish()) as b:
        np.testing.assert_array_equal(a.read(masked=True).mask, b.read(masked=True).mask)
        np.testing.assert_array_equal(a.read(), b.read())


@pytest.mark.parametrize(
    ("georef", "sink_kwargs", "streamed"),
    [
        (GEOREF, {}, True),
        # 1030 / 4 is no whole number: GDAL makes the overviews of the partial file.
        (Georeference(GEOREF.crs, GEOREF.transform, 1030, 1030), {}, False),
        (GEOREF, {"compress": "zstd"}, False),
        (GEOREF, {"dtype": "uint8", "scaled": True}, False),
        (GEOREF, {"stream": False}, False),
    ],
    ids=["float-deflate", "float-odd-sides", "float-zstd", "uint8", "not-asked"],
)
def test_outputs_stream_where_they_can_and_count_finishing_disk_either_way(
    tmp_path: Path, georef: Georeference, sink_kwargs: dict[str, Any], streamed: bool
) -> None:
    sink = RasterSink(tmp_path / "out.tif", georef, ["a"], **sink_kwargs)
    assert sink.streamed is streamed
    values = np.random.default_rng(9).random((1, georef.height, georef.width)).astype(np.float32)
    values[:, :40] = np.nan
    for row in range(0, georef.height, 700):
        sink.write(row, values[:, row : row + 700])
    used = sink.disk_bytes()
    assert used > 0
    # Streamed tiles are copied into the COG: as much again; a partial's COG half as much.
    assert sink.finish_bytes() == (used if streamed else used // 2)
    out = sink.finish()
    assert cog_validate(out)[0]
    assert list(tmp_path.iterdir()) == [out]
    steps = {"write", "assemble"} if streamed else {"write", "overviews", "cog"}
    assert set(sink.seconds) == steps
    assert all(s >= 0 for s in sink.seconds.values())
    with rasterio.open(out) as ds:
        assert ds.overviews(1)
        got = read_band(ds, 1, False)
    atol = 0.5 / 255 if sink_kwargs.get("dtype") == "uint8" else 0
    np.testing.assert_allclose(got, values[0], atol=atol)
