"""TIFF structure of COGs: tags read from GDAL's files, and headers GDAL reads back."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from service.raster import tiff_layout
from service.raster.tiff_layout import GHOST_BYTES, SHORT, Level, Tag, header, read_tags


def test_read_tags_gives_the_entries_gdal_wrote(tmp_path: Path) -> None:
    path = tmp_path / "small.tif"
    profile = {"driver": "GTiff", "width": 3, "height": 2, "count": 2, "dtype": "uint16"}
    with rasterio.open(path, "w", crs="EPSG:32631", transform=from_origin(5, 9, 1, 1), **profile):
        pass
    tags = {t.tag: t for t in read_tags(path)}
    assert struct.unpack("<H", tags[256].value) == (3,)
    assert struct.unpack("<H", tags[257].value) == (2,)
    assert tags[258].count == 2
    assert struct.unpack("<2H", tags[258].value) == (16, 16)
    assert 34735 in tags  # the GeoKey directory, out of line: read where it points
    assert len(tags[34735].value) == 2 * tags[34735].count


def test_read_tags_refuses_what_it_cannot_read(tmp_path: Path) -> None:
    path = tmp_path / "big-endian.tif"
    path.write_bytes(b"MM\x00*" + bytes(8))
    with pytest.raises(ValueError, match="not a little-endian classic TIFF"):
        read_tags(path)


def _one_level(values: np.ndarray, tile: int) -> tuple[Level, bytes]:
    """Uncompressed uint8 tiles of ``values`` with leader and trailer, row-major."""
    height, width = values.shape
    data = b""
    sizes, offsets = [], []
    for top in range(0, height, tile):
        for left in range(0, width, tile):
            block = np.zeros((tile, tile), np.uint8)
            part = values[top : top + tile, left : left + tile]
            block[: part.shape[0], : part.shape[1]] = part
            raw = block.tobytes()
            offsets.append(len(data))
            sizes.append(len(raw))
            data += struct.pack("<I", len(raw)) + raw + raw[-4:]
    tags = [
        Tag.of(256, SHORT, [width]),
        Tag.of(257, SHORT, [height]),
        Tag.of(258, SHORT, [8]),
        Tag.of(259, SHORT, [1]),
        Tag.of(262, SHORT, [1]),
        Tag.of(277, SHORT, [1]),
        Tag.of(322, SHORT, [tile]),
        Tag.of(323, SHORT, [tile]),
    ]
    return Level(tags, sizes, offsets, len(data)), data


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
@pytest.mark.parametrize("bigtiff", [False, True])
def test_a_header_and_its_tiles_read_back_in_gdal(
    tmp_path: Path, bigtiff: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if bigtiff:  # as a file past 4 GB would be written
        monkeypatch.setattr(tiff_layout, "CLASSIC_LIMIT", 0)
    rng = np.random.default_rng(2)
    full = rng.integers(0, 255, (40, 48), dtype=np.uint8)
    small = full[::2, ::2].copy()
    main, main_data = _one_level(full, 16)
    ovr, ovr_data = _one_level(small, 16)
    ovr.tags.append(Tag.of(254, 4, [1]))
    head, data_at = header([main, ovr])
    assert head[2] == (43 if bigtiff else 42)
    assert GHOST_BYTES in head[:200]
    # The overview's tiles come first, the full resolution's last.
    assert data_at == [len(head) + len(ovr_data), len(head)]
    path = tmp_path / "made.tif"
    path.write_bytes(head + ovr_data + main_data)
    with rasterio.open(path) as ds:
        assert ds.block_shapes == [(16, 16)]
        np.testing.assert_array_equal(ds.read(1), full)
        assert ds.overviews(1) == [2]
    with rasterio.open(path, overview_level=0) as ds:
        np.testing.assert_array_equal(ds.read(1), small)
