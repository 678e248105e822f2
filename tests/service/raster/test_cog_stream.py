"""Float COGs written while the rows come: GDAL reads them as the COGs its own driver makes."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from service.raster import tiff_layout
from service.raster.cog_blocks import average_2x2
from service.raster.cog_stream import StreamedCog, can_stream
from service.raster.georef import Georeference

CRS = rasterio.crs.CRS.from_epsg(32631).to_wkt()


def _georef(width: int, height: int) -> Georeference:
    return Georeference(CRS, (10.0, 0.0, 500000.0, 0.0, -10.0, 5000000.0), width, height)


def _stream(
    tmp_path: Path, width: int, height: int, bands: int, factors: list[int], level: int = 1
) -> StreamedCog:
    names = [f"band {i}" for i in range(bands)]
    out = tmp_path / "out.tif"
    return StreamedCog(
        out, out.with_suffix(".partial.tif"), _georef(width, height), names, factors, level
    )


# Level 1 is ISA-L's deflate where installed, other levels libdeflate's: GDAL reads both.
@pytest.mark.parametrize("level", [1, 6])
def test_values_of_every_kind_come_back_bit_for_bit(tmp_path: Path, level: int) -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(0, 1e3, (3, 512, 700)).astype(np.float32)
    values[0, 0, :6] = [np.inf, -np.inf, 1e-42, -0.0, np.finfo(np.float32).max, -1e-30]
    values[1, 10:20] = np.nan
    stream = _stream(tmp_path, 700, 512, 3, [2], level)
    with pytest.raises(ValueError, match="multiples"):
        _stream(tmp_path, 700, 513, 3, [2])
    stream.write(0, values)
    out = stream.finish()
    assert cog_validate(out, quiet=True)[0]
    with rasterio.open(out) as ds:
        assert ds.descriptions == ("band 0", "band 1", "band 2")
        assert ds.crs.to_epsg() == 32631
        np.testing.assert_array_equal(ds.read().view(np.uint32), values.view(np.uint32))


def test_windows_of_row_groups_in_any_order_make_the_same_cog(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    width, height = 1536, 1280
    values = rng.random((2, height, width)).astype(np.float32)
    values[:, 600:700, 200:900] = np.nan
    stream = _stream(tmp_path, width, height, 2, [2, 4])
    # Row groups of 300 rows, across block rows; each group's windows right to left.
    open_most = 0
    for top in range(0, height, 300):
        rows = min(300, height - top)
        for left in (1000, 400, 0):
            right = {0: 400, 400: 1000, 1000: width}[left]
            stream.write(top, values[:, top : top + rows, left:right], left)
        open_most = max(open_most, stream.levels[0].held())
    assert open_most <= 6  # only tiles still being filled are parked
    out = stream.finish()
    assert cog_validate(out, quiet=True)[0]
    assert not list(tmp_path.glob("*.part*"))
    with rasterio.open(out) as ds:
        assert ds.overviews(1) == [2, 4]
        np.testing.assert_array_equal(ds.read(), values)
    # Averaged tile by tile, the overviews are the whole raster's averages, bit for bit.
    with rasterio.open(out, overview_level=0) as ds:
        np.testing.assert_array_equal(ds.read(), average_2x2(values))
    with rasterio.open(out, overview_level=1) as ds:
        np.testing.assert_array_equal(ds.read(), average_2x2(average_2x2(values)))


def _peak_writing(tmp_path: Path, width: int) -> int:
    """Most bytes allocated while a stream takes 3 row groups of 384 rows in 512-px windows."""
    stream = _stream(tmp_path, width, 1536, 2, [2, 4])
    window = np.random.default_rng(9).random((2, 384, 512)).astype(np.float32)
    tracemalloc.start()
    try:
        for top in range(0, 1152, 384):
            for left in range(0, width, 512):
                stream.write(top, window.copy(), left)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        stream.abort()


def test_memory_does_not_grow_with_the_rasters_width(tmp_path: Path) -> None:
    _peak_writing(tmp_path, 1024)  # the encoding threads' own buffers (6 MiB each) made once
    narrow, wide = _peak_writing(tmp_path, 1024), _peak_writing(tmp_path, 8192)
    # Block rows held across the width took 11.5 MiB at 1024 columns, 69.5 MiB at 8192.
    assert wide < narrow + 8 * 2**20
    assert wide < 24 * 2**20


def test_rows_after_their_block_row_was_written_are_refused(tmp_path: Path) -> None:
    stream = _stream(tmp_path, 512, 1024, 1, [])
    stream.write(0, np.zeros((1, 512, 512), np.float32))
    with pytest.raises(ValueError, match=r"after its block row was written|overlap"):
        stream.write(500, np.zeros((1, 10, 512), np.float32))
    stream.abort()
    assert list(tmp_path.iterdir()) == []


def test_rows_never_written_are_nodata_and_take_no_disk(tmp_path: Path) -> None:
    stream = _stream(tmp_path, 2048, 2048, 1, [2, 4])
    stream.write(1024, np.full((1, 100, 300), 0.25, np.float32), 512)
    out = stream.finish()
    assert cog_validate(out, quiet=True)[0]
    assert out.stat().st_size < 64 * 1024
    with rasterio.open(out) as ds:
        values = ds.read(1, masked=True)
        assert values.count() == 100 * 300
        assert (values[1024:1124, 512:812] == 0.25).all()


def test_a_file_past_4_gb_is_written_as_bigtiff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tiff_layout, "CLASSIC_LIMIT", 0)
    values = np.random.default_rng(3).random((1, 1024, 1024)).astype(np.float32)
    stream = _stream(tmp_path, 1024, 1024, 1, [2])
    stream.write(0, values)
    out = stream.finish()
    assert out.read_bytes()[2] == 43
    assert cog_validate(out, quiet=True)[0]
    with rasterio.open(out) as ds:
        np.testing.assert_array_equal(ds.read(), values)


@pytest.mark.parametrize(
    ("width", "height", "levels", "ok"),
    [(4096, 4096, 3, True), (12000, 12000, 5, True), (10980, 10980, 5, False), (600, 520, 1, True)],
)
def test_can_stream_where_every_overview_halves_exactly(
    width: int, height: int, levels: int, ok: bool
) -> None:
    assert can_stream(width, height, levels) is ok
