"""Polygons from a probability raster: areas, per-polygon statistics, CRS and limits."""

from __future__ import annotations

import numpy as np
import pytest
from rasterio.crs import CRS
from rasterio.transform import from_origin

from service.errors import InvalidInput
from service.raster.footprints import FootprintOptions, euler_number, extract_footprints

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


@pytest.mark.parametrize("rows", [1, 7, 1024])
def test_the_euler_number_is_regions_minus_holes(rows: int) -> None:
    ndi = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(3)
    for density in (0.1, 0.45, 0.6, 0.9):
        mask = (rng.random((41, 57)) < density).astype(np.uint8) * 2
        regions = ndi.label(mask == 2, ndi.generate_binary_structure(2, 1))[1]
        # Holes: 8-connected background not joined to the outside.
        background = np.pad(mask != 2, 1, constant_values=True)
        holes = ndi.label(background, np.ones((3, 3), bool))[1] - 1
        assert euler_number(mask, 2, rows) == regions - holes
    assert euler_number(np.zeros((5, 5), np.uint8), 1) == 0


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
