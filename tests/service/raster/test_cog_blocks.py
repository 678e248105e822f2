"""A streamed COG level: pixels parked on disk per tile, tiles appended whole and in order."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import Resampling

from service.raster.cog_blocks import TILE, BlockLevel, average_2x2, isal_zlib, zlib_deflate


def _tiles(level: BlockLevel) -> list[np.ndarray | None]:
    """The level's appended tiles, decompressed and the predictor undone."""
    level.file.flush()
    data = level.path.read_bytes()
    out: list[np.ndarray | None] = []
    for offset, size in zip(level.offsets, level.sizes, strict=True):
        if size == 0:
            out.append(None)
            continue
        assert struct.unpack("<I", data[offset : offset + 4])[0] == size
        raw = np.frombuffer(zlib.decompress(data[offset + 4 : offset + 4 + size]), np.uint8)
        # Predictor 3 undone: a running sum of every bands-th byte across the row's planes.
        diff = raw.reshape(TILE, 4 * TILE * level.bands)
        flat = np.empty_like(diff)
        for b in range(level.bands):
            flat[:, b :: level.bands] = np.cumsum(diff[:, b :: level.bands], axis=1)
        planes = flat.reshape(TILE, 4, TILE * level.bands)
        values = planes.transpose(0, 2, 1)[:, :, ::-1].copy().view("<f4")
        out.append(values.reshape(TILE, TILE, level.bands))
    return out


def test_tiles_are_appended_in_row_major_order_as_soon_as_whole(tmp_path: Path) -> None:
    values = np.random.default_rng(2).random((2, 1024, 1100)).astype(np.float32)
    level = BlockLevel(tmp_path / "level.part", 2, 1100, 1024, 1)
    # The right tile of the first row comes whole first: it waits for the left one.
    level.put(0, 512, values[:, :512, 512:])
    assert level.ready() == 0
    level.put(0, 0, values[:, :300, :512])
    level.put(300, 0, values[:, 300:512, :512])
    assert level.ready() == 3  # the narrow last tile of the row came with the window
    for index in range(3):
        data, reduced = level.encode(index, average=True)
        level.append(index, data)
        assert reduced is not None
        rows, cols = min(TILE, 1024 - index // 3 * TILE), min(TILE, 1100 - index % 3 * TILE)
        assert reduced.shape == (2, rows // 2, cols // 2)
    assert level.held() == 0  # their slots are free again
    with pytest.raises(ValueError, match="after its block row was written"):
        level.put(500, 0, values[:, 500:520, :512])
    # The second row: a window in the slot an earlier tile used, the rest never written.
    level.put(600, 0, values[:, 600:700, :512])
    assert level.held() == 1
    # The parked rows take disk, counted: 100 rows of 512 pixels of 2 bands.
    assert level.scratch.stat().st_blocks * 512 >= 100 * 512 * 2 * 4
    assert level.disk_bytes() >= level.scratch.stat().st_blocks * 512
    assert level.ready() == 0
    assert level.ready(everything=True) == 3
    for index in range(3, 6):
        level.append(index, level.encode(index, average=False)[0])
    tiles = _tiles(level)
    np.testing.assert_array_equal(tiles[0], values[:, :512, :512].transpose(1, 2, 0))
    last = tiles[2]
    assert last is not None
    np.testing.assert_array_equal(last[:, :76], values[:, :512, 1024:].transpose(1, 2, 0))
    assert np.isnan(last[:, 76:]).all()  # past the raster's edge
    partly = tiles[3]
    assert partly is not None
    np.testing.assert_array_equal(partly[88:188], values[:, 600:700, :512].transpose(1, 2, 0))
    assert np.isnan(partly[:88]).all()
    assert np.isnan(partly[188:]).all()
    assert tiles[4] is None
    assert tiles[5] is None
    assert level.scratch.stat().st_size == 0  # nothing parked: its disk given back
    level.close()
    assert not level.scratch.exists()


def test_windows_narrower_than_a_tile_fill_it_row_by_row(tmp_path: Path) -> None:
    values = np.random.default_rng(5).random((1, 512, 512)).astype(np.float32)
    level = BlockLevel(tmp_path / "level.part", 1, 512, 512, 1)
    for left in (384, 0, 128, 256):
        level.put(0, left, values[:, :, left : left + 128])
        assert level.ready() == (1 if left == 256 else 0)
    with pytest.raises(ValueError, match="overlap"):
        level.put(100, 0, values[:, 100:101, :10])
    level.append(0, level.encode(0, average=False)[0])
    np.testing.assert_array_equal(_tiles(level)[0], values.transpose(1, 2, 0))
    level.close()


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_average_2x2_is_gdals_average_overview(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    values = rng.random((2, 256, 320)).astype(np.float32)
    values[:, 20:40] = np.nan
    values[:, ::3, ::5] = np.nan
    values[0, 100:102, 50:52] = np.nan  # a whole 2 x 2 of nodata
    path = tmp_path / "plain.tif"
    profile = {"driver": "GTiff", "width": 320, "height": 256, "count": 2, "dtype": "float32"}
    with rasterio.open(path, "w", nodata=float("nan"), **profile) as dst:
        dst.write(values)
    with rasterio.open(path, "r+") as dst:
        dst.build_overviews([2], Resampling.average)
    with rasterio.open(path, overview_level=0) as ds:
        want = ds.read()
    got = average_2x2(values)
    assert np.isnan(got[0, 50, 25])
    np.testing.assert_array_equal(got, want)
    # A band-last tile's view averages the same.
    np.testing.assert_array_equal(average_2x2(values.transpose(1, 2, 0).transpose(2, 0, 1)), want)


def test_level_1_is_isal_and_other_levels_libdeflate_both_plain_zlib() -> None:
    # Both are zlib streams a TIFF reader inflates; ISA-L is the fast level 1.
    data = np.random.default_rng(3).integers(0, 30, 1 << 20, dtype=np.uint8)
    for level in (1, 6):
        assert zlib.decompress(zlib_deflate(memoryview(data), level)) == data.tobytes()
    if isal_zlib is not None:
        assert zlib_deflate(memoryview(data), 1) == isal_zlib.compress(memoryview(data), 1)
