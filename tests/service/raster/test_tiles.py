"""Web Mercator tiles of a band: colours by kind, transparency, and where the pixels land."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import rasterio.warp
from rasterio.crs import CRS

from service.raster.georef import Georeference
from service.raster.tiles import (
    CLASS_NODATA,
    CONTINUOUS,
    BandStyle,
    TileReader,
    array_raster,
    check_tile,
    class_colormap,
    colormap_stops,
    open_bytes,
    rgb_indexes,
    stretch,
)
from tests.helpers.geotiff import ORIGIN, UTM
from tests.helpers.tiles import rgba, tile_at, tile_bounds

# GDAL reads GDAL_SKIP once, when it first registers its drivers. In-process app
# tests skip VRT, which rio-tiler's warps need: register the drivers at collection.
with rasterio.Env():
    pass

GEOREF = Georeference(CRS.from_string(UTM).to_wkt(), tuple(ORIGIN)[:6], 300, 200)  # type: ignore[arg-type]


def centre_tile(reader: TileReader, z: int) -> tuple[int, int, int]:
    west, south, east, north = reader.bounds
    return tile_at((west + east) / 2, (south + north) / 2, z)


def expected(values: np.ndarray, tile: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The band warped onto the tile's Web Mercator grid by GDAL (nearest): values and validity."""
    left, bottom, right, top = tile_bounds(*tile)
    out = np.full((256, 256), np.nan, np.float32)
    rasterio.warp.reproject(
        values.astype(np.float32),
        out,
        src_transform=rasterio.Affine(*GEOREF.transform),
        src_crs=UTM,
        src_nodata=np.nan,
        dst_transform=rasterio.transform.from_bounds(left, bottom, right, top, 256, 256),
        dst_crs="EPSG:3857",
        dst_nodata=np.nan,
        resampling=rasterio.warp.Resampling.nearest,
    )
    return out, np.isfinite(out)


def test_a_probability_tile_is_the_band_warped_to_web_mercator_in_viridis() -> None:
    rng = np.random.default_rng(1)
    values = rng.random((200, 300)).astype(np.float32)
    values[:40] = np.nan  # nodata
    with open_bytes(array_raster(values[None], GEOREF, categorical=False)) as ds:
        reader = TileReader(ds)
        tile = centre_tile(reader, reader.maxzoom)
        got = rgba(reader.tile(*tile, BandStyle(1), "png"))
    want, valid = expected(values, tile)
    lut = np.array([CONTINUOUS[i] for i in range(256)], np.uint8)
    colours = lut[np.clip(np.nan_to_num(want) * 255 + 0.5, 0, 255).astype(np.uint8)]
    # Pixels that GDAL's two warps place on the same source pixel agree exactly;
    # a few along pixel edges may land on a neighbour.
    assert (got[3] == np.where(valid, 255, 0)).mean() > 0.98
    both = valid & (got[3] == 255)
    assert both.sum() > 1000
    same = (got[:3].transpose(1, 2, 0)[both] == colours[both][:, :3]).all(axis=1)
    assert same.mean() > 0.97


def test_class_maps_take_class_colours_and_no_class_is_transparent() -> None:
    classes = np.tile(np.arange(3, dtype=np.float32), (200, 100))
    classes[:, :30] = np.nan
    with open_bytes(array_raster(classes[None], GEOREF, categorical=True)) as ds:
        reader = TileReader(ds)
        got = rgba(reader.tile(*centre_tile(reader, reader.maxzoom - 1), BandStyle(1, 3), "png"))
    colours = {tuple(c[:3]) for c in class_colormap(3).values()}
    shown = got[:3, got[3] == 255].T
    assert {tuple(int(v) for v in c) for c in shown} <= colours
    assert len({tuple(c) for c in shown.tolist()}) == 3
    assert (got[3] == 0).any()  # the columns without a class


def test_a_tile_off_the_raster_is_transparent_and_webp_is_served_too() -> None:
    values = np.full((1, 200, 300), 0.5, np.float32)
    with open_bytes(array_raster(values, GEOREF, categorical=False)) as ds:
        reader = TileReader(ds)
        z, x, y = centre_tile(reader, reader.maxzoom)
        off = rgba(reader.tile(z, x + 50, y, BandStyle(1), "png"))
        webp = reader.tile(z, x, y, BandStyle(1), "webp")
    assert off.shape == (4, 256, 256)
    assert not off[3].any()
    assert webp[:4] == b"RIFF"
    assert webp[8:12] == b"WEBP"


def test_bounds_are_the_rasters_in_wgs84() -> None:
    with open_bytes(array_raster(np.zeros((1, 200, 300)), GEOREF, categorical=False)) as ds:
        bounds = TileReader(ds).bounds
        want = rasterio.warp.transform_bounds(UTM, "EPSG:4326", *ds.bounds, densify_pts=21)
    np.testing.assert_allclose(bounds, want, atol=1e-9)


def test_array_rasters_keep_class_nodata_and_mask_continuous_nodata() -> None:
    values = np.array([[[np.nan, 1.0], [0.0, 0.25]]], np.float32)
    georef = Georeference(GEOREF.crs, GEOREF.transform, 2, 2)
    with open_bytes(array_raster(values, georef, categorical=True)) as ds:
        assert ds.read(1).tolist() == [[CLASS_NODATA, 1], [0, 0]]
    with open_bytes(array_raster(values, georef, categorical=False)) as ds:
        assert ds.read(1).tolist() == [[0, 255], [0, 64]]
        assert ds.read_masks(1).tolist() == [[0, 255], [255, 255]]


@pytest.mark.parametrize(("z", "x", "y"), [(-1, 0, 0), (25, 0, 0), (2, 4, 0), (2, 0, -1)])
def test_tiles_outside_the_matrix_are_refused(z: int, x: int, y: int) -> None:
    with pytest.raises(ValueError, match="must be"):
        check_tile(z, x, y)


def test_an_image_is_stretched_per_band_and_one_band_is_grey() -> None:
    ramp = np.tile(np.arange(300, dtype=np.float32), (200, 1))[None]  # 0..299 left to right
    with rasterio.MemoryFile() as mem:
        profile = {"driver": "GTiff", "width": 300, "height": 200, "count": 1, "dtype": "float32"}
        with mem.open(**profile, crs=UTM, transform=ORIGIN) as dst:
            dst.write(ramp)
        with mem.open() as ds:
            ((lo, hi),) = stretch(ds, [1])
            reader = TileReader(ds)
            got = rgba(
                reader.rgb_tile(*centre_tile(reader, reader.maxzoom), [1], [(lo, hi)], "png")
            )
    np.testing.assert_allclose((lo, hi), np.percentile(np.arange(300), [2, 98]), atol=3)
    shown = got[3] == 255
    assert (got[0][shown] == got[1][shown]).all()
    assert (got[1][shown] == got[2][shown]).all()
    # The ramp rises left to right, and so do the tile's greys (the columns' means).
    columns = np.where(shown, got[0], np.nan).astype(float)
    means = np.nanmean(columns[:, shown.any(axis=0)], axis=0)
    assert (np.diff(means) >= -1).all()
    assert means[-1] - means[0] > 50


@pytest.mark.parametrize(
    ("names", "count", "want"),
    [
        (["B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12"], 10, [3, 2, 1]),
        (["B2", "B3", "B4", "B8"], 40, [3, 2, 1]),  # a stack: the first date's bands
        (["red", "green", "blue"], 3, [1, 2, 3]),
        (["MIR", "BLUE", "NIR", "RED", "EVI", "NDVI"], 6, [4]),  # no green: red as grey
        (["nir", "swir"], 2, [1, 2]),
        ([], 5, [1, 2, 3]),
        ([], 1, [1]),
    ],
)
def test_an_image_shows_its_red_green_and_blue_bands_by_name(
    names: list[str], count: int, want: list[int]
) -> None:
    assert rgb_indexes(names, count) == want


def test_legend_stops_are_the_tiles_colour_map() -> None:
    from rio_tiler.colormap import cmap

    viridis = cmap.get("viridis")
    stops = colormap_stops()
    assert len(stops) == 11
    assert stops[0] == "#{:02x}{:02x}{:02x}".format(*viridis[0][:3])
    assert stops[-1] == "#{:02x}{:02x}{:02x}".format(*viridis[255][:3])
