"""Reading a scene window by window: validity, padded tiles and band means."""

from __future__ import annotations

import io
import tracemalloc
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from service.errors import InvalidRaster
from service.pipeline import scene_read
from service.pipeline.scene_read import all_valid, open_scene, read_tile, scene_band_mean
from service.raster.decode import describe
from service.runtime.segmentation import band_means
from service.runtime.tiling import TileGrid
from tests.helpers.geotiff import noise, write_geotiff
from tests.helpers.scenes import tile_scene


def _masked(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    data = noise(size=96)
    mask = np.full((96, 96), 255, np.uint8)
    mask[:, :32] = 0  # the left third has no data
    path = tmp_path / "masked.tif"
    write_geotiff(path, data, mask=mask)
    return path, data, mask > 0


def test_a_file_without_mask_is_valid_everywhere_and_one_with_is_not(tmp_path: Path) -> None:
    plain = write_geotiff(tmp_path / "plain.tif", noise(size=32))
    assert isinstance(plain, Path)
    masked, _, _ = _masked(tmp_path)
    with open_scene(plain) as ds:
        assert all_valid(ds)
    with open_scene(masked) as ds:
        assert not all_valid(ds)


def test_a_file_that_is_no_geotiff_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "junk.tif"
    path.write_bytes(b"not a tiff at all")
    with pytest.raises(InvalidRaster), open_scene(path):
        pass


def test_tiles_come_padded_to_their_size_and_skipped_where_nothing_is_valid(
    tmp_path: Path,
) -> None:
    path, data, _valid = _masked(tmp_path)
    grid = TileGrid(96, 96, 32, 0)
    with open_scene(path) as ds:
        info = describe(ds)
        tiles = list(grid.row_tiles(0))
        assert read_tile(ds, tiles[0], info, False) is None  # all in the masked third
        got = read_tile(ds, tiles[1], info, False)
        assert got is not None
        values, tile_valid = got
        assert values.shape == (3, 32, 32)
        assert values.dtype == np.float32
        np.testing.assert_array_equal(values, data[:, :32, 32:64])
        assert tile_valid.all()
        # Told the file is valid everywhere, the mask is not read at all.
        unmasked = read_tile(ds, tiles[0], info, True, pad=False)
        assert unmasked is not None
        assert unmasked[1].all()


def test_band_means_count_only_valid_pixels(tmp_path: Path) -> None:
    path, data, valid = _masked(tmp_path)
    with open_scene(path) as ds:
        means = scene_band_mean(ds, describe(ds), all_valid(ds))
    np.testing.assert_allclose(means, data[:, valid].mean(axis=1), rtol=1e-5)


def _decimated_mean(path: Path) -> np.ndarray:
    """The band means of GDAL's decimated read of the whole file at once, as they were taken."""
    with open_scene(path) as ds:
        scale = max(1, -(-max(ds.width, ds.height) // 2048))
        shape = (ds.count, max(1, ds.height // scale), max(1, ds.width // scale))
        data = ds.read(out_shape=shape).astype(np.float32)
        valid = None if all_valid(ds) else ds.dataset_mask(out_shape=shape[1:]) > 0
    if data.dtype.kind == "f":
        finite = np.isfinite(data).all(axis=0)
        valid = finite if valid is None else valid & finite
    return band_means(np.nan_to_num(data), valid)


def _scene_mean(path: Path) -> np.ndarray:
    with open_scene(path) as ds:
        return scene_band_mean(ds, describe(ds), all_valid(ds))


def _traced(call: Callable[[], np.ndarray]) -> tuple[np.ndarray, int]:
    """What ``call`` gives, and the peak bytes numpy allocated meanwhile."""
    tracemalloc.start()
    try:
        return call(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    ("height", "width", "dtype", "overviews"),
    [
        (1000, 4200, "uint8", False),  # one pixel in 3, across rows of blocks
        (2050, 2051, "float32", False),  # one in 2, NaN bands as no data
        (700, 900, "uint16", False),  # every pixel
        (1000, 4200, "uint8", True),  # decimated by GDAL from the overviews
    ],
)
def test_band_means_take_the_pixels_of_a_decimated_read_with_a_bounded_memory(
    tmp_path: Path, height: int, width: int, dtype: str, overviews: bool
) -> None:
    rng = np.random.default_rng(height)
    data = rng.integers(0, 3000, (3, height, width)).astype(dtype)
    mask = np.full((height, width), 255, np.uint8)
    mask[:, : width // 3] = 0  # the left third has no data
    if dtype == "float32":
        data[1, 100:900, 300:] = np.nan
    path = tmp_path / "scene.tif"
    write_geotiff(path, data, mask=mask, tiled=True, blockxsize=256, blockysize=256)
    if overviews:
        with rasterio.open(path, "r+") as ds:
            ds.build_overviews([2, 4], rasterio.enums.Resampling.average)
    means, peak = _traced(lambda: _scene_mean(path))
    want, decimated_peak = _traced(lambda: _decimated_mean(path))
    np.testing.assert_array_equal(means, want)
    if not overviews:
        # The sample in the file's type and one band's float32 copies at a time,
        # not every band's at once and their copies.
        assert peak < 0.6 * decimated_peak


class CountingFile(io.FileIO):
    """A file GDAL reads through Python: counts the reads starting at each offset."""

    def __init__(self, path: str, mode: str = "rb", *, reads: Counter[int]) -> None:
        super().__init__(path, "r")
        self.reads = reads

    def readinto(self, buffer: Any) -> int | None:
        self.reads[self.tell()] += 1
        return super().readinto(buffer)

    def read(self, size: int | None = -1) -> bytes:
        self.reads[self.tell()] += 1
        return super().read(size)


@pytest.mark.parametrize(
    ("compress", "predictor", "tiled"),
    [
        ("deflate", None, True),
        ("deflate", 2, True),
        ("lzw", 2, True),
        ("zstd", None, True),
        ("jpeg", None, True),
        ("none", None, True),
        ("deflate", None, False),
    ],
)
def test_a_scene_read_tile_by_tile_fetches_each_source_block_once(
    tmp_path: Path,
    shared_data: Path,
    monkeypatch: pytest.MonkeyPatch,
    compress: str,
    predictor: int | None,
    tiled: bool,
) -> None:
    # Overlapping windows with halos, not aligned with the file's blocks: each
    # 512-pixel block (or strip) is touched by many windows and the band means.
    source = shared_data / "cogeo.tif"
    path = tile_scene(source, 2, tmp_path / "scene.tif", compress, predictor, tiled)
    reads: Counter[int] = Counter()
    opener = partial(CountingFile, reads=reads)
    monkeypatch.setattr(scene_read.rasterio, "open", partial(rasterio.open, opener=opener))
    with open_scene(path) as ds:
        info = describe(ds)
        rows, cols = ds.block_shapes[0]
        blocks = [
            int(ds.get_tag_item(f"BLOCK_OFFSET_{i}_{j}", "TIFF", bidx=1))
            for i in range(-(-ds.width // cols))
            for j in range(-(-ds.height // rows))
        ]
        valid_everywhere = all_valid(ds)
        scene_band_mean(ds, info, valid_everywhere)
        grid = TileGrid(info.height, info.width, 256, 64, 32)
        for tile in grid:
            window, dy, dx = tile.context(info.height, info.width)
            assert read_tile(ds, window, info, valid_everywhere, core=(dy, dx, tile.size))
    fetched = [reads[offset] for offset in blocks]
    assert len(grid) == 121
    assert min(fetched) == 1
    assert max(fetched) == 1, f"blocks fetched up to {max(fetched)} times"


def test_scenes_opened_and_closed_out_of_order_on_one_thread_keep_their_environment(
    tmp_path: Path,
) -> None:
    # Coroutines of one event loop (a job's units, another job's planning) interleave so.
    path = write_geotiff(tmp_path / "a.tif", noise(size=64))
    first = open_scene(path)
    second = open_scene(path)
    one = first.__enter__()
    two = second.__enter__()
    assert rasterio.env.getenv()["GDAL_PAM_ENABLED"] == "NO"
    first.__exit__(None, None, None)  # the first one out is not the last one in
    assert rasterio.env.getenv()["GDAL_PAM_ENABLED"] == "NO"  # still hardened for the other
    assert two.read(1).shape == (64, 64)
    second.__exit__(None, None, None)
    assert not rasterio.env.hasenv()
    assert one.closed
