"""Polygons from a probability raster: areas, per-polygon statistics, CRS and limits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.features
import shapely
import shapely.geometry
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.windows import Window

from service.errors import InvalidInput
from service.raster.footprints import FootprintOptions, extract_footprints
from tests.helpers.geotiff import write_geotiff

UTM = CRS.from_epsg(32631).to_wkt()
TRANSFORM = tuple(from_origin(500000, 4000000, 0.5, 0.5))[:6]


def _layers() -> dict[str, np.ndarray]:
    """A 64 x 64 probability map with two buildings (one of 4 px), and one gate map."""
    probability = np.full((64, 64), 0.1, np.float32)
    probability[10:30, 10:40] = 0.9  # 600 px
    probability[50:52, 50:52] = 0.8  # 4 px
    probability[0, 0] = np.nan
    gate = np.zeros((64, 64), np.float32)
    gate[10:30, 10:40] = 0.5
    return {"probability": probability, "gate_1": gate}


def _extract(options: FootprintOptions, crs: str | None = UTM, **kw: object) -> dict:
    layers = _layers()

    def read(name: str, rows: slice, cols: slice) -> np.ndarray:
        return layers[name][rows, cols]

    blocks = [(0, layers["probability"][:32]), (32, layers["probability"][32:])]
    return extract_footprints(
        blocks, 64, 64, TRANSFORM, crs, read, "probability", ["gate_1"], options, **kw
    )


def test_buildings_become_polygons_with_their_area_and_statistics() -> None:
    collection = _extract(FootprintOptions(native_crs=True))
    assert collection["crs"]["properties"]["name"] == "urn:ogc:def:crs:EPSG::32631"
    [building] = collection["features"]  # the 4 px one is under min_area_px
    props = building["properties"]
    assert props["area_px"] == 600
    assert props["area_m2"] == 150  # 600 pixels of 0.25 m2
    assert props["mean_probability"] == pytest.approx(0.9)
    assert props["attention"] == {"gate_1": pytest.approx(0.5)}
    assert props["mean_attention"] == 0.5
    xs = [x for x, _ in building["geometry"]["coordinates"][0]]
    assert (min(xs), max(xs)) == (500005.0, 500020.0)


def test_answers_are_in_wgs84_unless_native_and_in_pixels_without_a_crs() -> None:
    features = _extract(FootprintOptions(min_area_px=1))["features"]
    assert len(features) == 2
    lon, lat = features[0]["geometry"]["coordinates"][0][0]
    assert 2.9 < lon < 3.1  # UTM 31N's central meridian is 3 degrees east
    assert 36 < lat < 36.2
    bare = _extract(FootprintOptions(), crs=None)
    assert "pixel positions" in bare["crs_note"]
    assert "area_m2" not in bare["features"][0]["properties"]


def test_limits_name_the_parameters_to_raise() -> None:
    with pytest.raises(InvalidInput, match="more than 1 polygons"):
        _extract(FootprintOptions(min_area_px=1), max_features=1)
    with pytest.raises(InvalidInput, match="took too long"):
        _extract(FootprintOptions(), deadline=0.0)


def test_options_are_checked_and_keyed_for_file_names() -> None:
    with pytest.raises(InvalidInput, match="threshold must be between 0 and 1"):
        FootprintOptions(threshold=1.0)
    with pytest.raises(InvalidInput, match="must not be negative"):
        FootprintOptions(min_area_px=-1)
    assert FootprintOptions(threshold=0.25).key() == "t0p25-a16-s1-4326"
    assert FootprintOptions(native_crs=True).key().endswith("-native")


def test_a_class_map_gives_one_polygon_per_class_region() -> None:
    classes = np.zeros((64, 64), np.float32)  # class 0 everywhere else
    classes[10:30, 10:40] = 2  # 600 px
    classes[40:50, :] = np.nan  # no data
    classes[60:64, 60:64] = 255  # no class (below the minimum confidence)
    layers = {"class": classes, "gate_1": _layers()["gate_1"]}

    def read(name: str, rows: slice, cols: slice) -> np.ndarray:
        return layers[name][rows, cols]

    collection = extract_footprints(
        [(0, classes)], 64, 64, TRANSFORM, UTM, read, "class", ["gate_1"],
        FootprintOptions(native_crs=True), classes=["water", "forest", "built"],
    )  # fmt: skip
    props = sorted((f["properties"] for f in collection["features"]), key=lambda p: p["area_px"])
    assert [(p["class"], p["value"], p["area_px"]) for p in props] == [
        ("built", 2, 600),
        ("water", 0, 64 * 14 - 16),  # below the rows of no data
        ("water", 0, 64 * 40 - 600),  # above them, around the built area
    ]
    assert props[0]["area_m2"] == 150
    assert props[0]["attention"] == {"gate_1": pytest.approx(0.5)}
    assert "mean_probability" not in props[0]


def test_a_noisy_mask_is_refused_before_it_is_polygonised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    noisy = np.random.default_rng(0).random((256, 256)).astype(np.float32)

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("polygonised a mask whose regions alone are over the limit")

    monkeypatch.setattr("rasterio.features.shapes", never)
    options = FootprintOptions(threshold=0.5, min_area_px=0, simplify_px=0)
    with pytest.raises(InvalidInput, match="more than 1000 polygons"):
        extract_footprints(
            [(0, noisy)], 256, 256, TRANSFORM, UTM, lambda *a: noisy, "p", [], options, 1000
        )


def _real_probability(shared: Path, tmp: Path) -> Path:
    """A probability GeoTIFF of real imagery: darker pixels of ``cogeo.tif`` are buildings.

    Its regions are real shapes (holes, corners, regions across many rows), and it keeps
    the source's georeference (EPSG:3857, pixel sizes with no exact binary form).
    """
    with rasterio.open(shared / "cogeo.tif") as src:
        rgb = src.read(window=Window(200, 300, 301, 257)).astype(np.float32)
        transform = src.window_transform(Window(200, 300, 301, 257))
        crs = src.crs
    probability = 1.0 - rgb.mean(axis=0, keepdims=True) / 255.0
    probability[:, 100:110, 40:60] = np.nan  # nodata is never a building
    out = tmp / "probability.tif"
    write_geotiff(out, probability, crs=crs, transform=transform, tiled=True,
                  blockxsize=128, blockysize=128, compress="deflate")  # fmt: skip
    return out


def _streamed(path: Path, rows: int, options: FootprintOptions) -> dict:
    with rasterio.open(path) as ds:
        height, width = ds.height, ds.width

        def read(name: str, r: slice, c: slice) -> np.ndarray:
            window = Window(c.start, r.start, c.stop - c.start, r.stop - r.start)
            values = ds.read(1, window=window, masked=True).astype(np.float32).filled(np.nan)
            return values if name == "probability" else values / 2  # a stand-in gate

        blocks = ((first, read("probability", slice(first, min(height, first + rows)),
                   slice(0, width))) for first in range(0, height, rows))  # fmt: skip
        return extract_footprints(
            blocks, height, width, tuple(ds.transform)[:6], ds.crs.to_wkt(), read,
            "probability", ["gate"], options,
        )  # fmt: skip


@pytest.mark.parametrize("threshold", [0.45, 0.6])
def test_footprints_streamed_block_by_block_are_those_of_the_whole_raster(
    shared_data: Path, tmp_path: Path, threshold: float
) -> None:
    path = _real_probability(shared_data, tmp_path)
    exact = FootprintOptions(threshold=threshold, min_area_px=4, simplify_px=0, native_crs=True)
    # Blocks of 7 rows: most regions are cut at least once.
    streamed = _streamed(path, 7, exact)
    # GDAL's polygons of the whole mask at once, and each one's mean probability.
    with rasterio.open(path) as ds:
        values = ds.read(1, masked=True).astype(np.float32).filled(np.nan)
        with np.errstate(invalid="ignore"):
            mask = (values >= threshold).astype(np.uint8)
        expected = {}
        for geom, _ in rasterio.features.shapes(
            mask, mask=mask.astype(bool), connectivity=4, transform=ds.transform
        ):
            poly = shapely.geometry.shape(geom)
            if poly.area / abs(ds.transform.a * ds.transform.e) >= 4:
                inside = rasterio.features.geometry_mask(
                    [geom], mask.shape, ds.transform, invert=True
                )
                key = shapely.normalize(poly).wkb
                expected[key] = round(float(values[inside].mean()), 4)
    got = {
        shapely.normalize(shapely.geometry.shape(f["geometry"])).wkb: f["properties"][
            "mean_probability"
        ]
        for f in streamed["features"]
    }
    assert len(expected) > 20  # real regions, some with holes
    assert any(len(shapely.geometry.shape(f["geometry"]).interiors) for f in streamed["features"])
    assert got == expected
    # Whatever the blocks, the same polygons, attributes and order, in every output form.
    for options in (exact, FootprintOptions(threshold=threshold)):
        reference = _streamed(path, 10_000, options)
        for rows in (1, 64):
            assert _streamed(path, rows, options) == reference
