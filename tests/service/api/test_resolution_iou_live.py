"""Held-out real imagery at half and double resolution scores as at its own (live server).

The Dubai tiles the footprints model's manifest says it held out of training
(``training.held_out``) give the images: the two with most buildings, a
centred crop of each (about 0.5 m), written as GeoTIFFs in UTM at 0.5 m, then
resampled by GDAL to 1 m and 0.25 m with the right transforms. The server must
resample each to the model's ``gsd_m`` and answer on the input's grid, scoring
about the same IoU against the building mask at each resolution.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import rasterio
from rasterio.enums import Resampling as GDALResampling
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile
from rasterio.transform import from_origin
from rasterio.windows import Window

from service.runtime.manifest import MANIFEST_KEY
from tests.helpers.geotiff import geotiff
from tests.helpers.jobs import follow
from tests.helpers.server import LiveServer, serving

DUBAI = Path(__file__).resolve().parents[4] / "shared" / "data" / "footprints" / "dubai"
BUILDING = (0x3C, 0x10, 0x98)
SIDE = 768  # of each crop, at 0.5 m
ORIGIN = (326_000.0, 2_788_000.0)
NATIVE_M = 0.5


def _gsd_model(model_dir: Path) -> tuple[str, float, list[str]] | None:
    """``(name:version, gsd_m, held-out Dubai tiles)`` of the newest model with a gsd_m."""
    found = []
    for path in model_dir.glob("footprints-*.onnx"):
        proto = onnx.load(str(path), load_external_data=False)
        meta = {p.key: p.value for p in proto.metadata_props}
        manifest = json.loads(meta.get(MANIFEST_KEY, "{}"))
        gsd = manifest.get("input", {}).get("gsd_m")
        if manifest.get("name") == "footprints" and gsd:
            version = tuple(int(v) for v in manifest["version"].split(".") if v.isdigit())
            held = str(manifest.get("training", {}).get("held_out", ""))
            tiles = sorted(set(re.findall(r"Tile \d+", held)))
            found.append((version, f"footprints:{manifest['version']}", float(gsd), tiles))
    if not found:
        return None
    _, ref, gsd, tiles = max(found)
    return ref, gsd, tiles


@pytest.fixture(scope="module")
def gsd_server(
    tmp_path_factory: pytest.TempPathFactory, model_dir: Path
) -> Iterator[tuple[LiveServer, str, list[Path]]]:
    """A live server of the shipped models, and the footprints model that has a gsd_m."""
    model = _gsd_model(model_dir)
    if model is None:
        pytest.skip(
            f"no footprints model in {model_dir} states input.gsd_m yet: the resolution "
            "IoU check needs one (a model trained at a known ground sample distance)"
        )
    # Tile 8 when the manifest names none (the training default holds out the last tiles).
    tiles = [DUBAI / t for t in model[2]] or [DUBAI / "Tile 8"]
    for tile in tiles:
        if not tile.is_dir():
            pytest.fail(f"held-out imagery not found at {tile}")
    with serving(model_dir, tmp_path_factory.mktemp("iou")) as server:
        yield server, model[0], tiles


def _buildings(path: Path, window: Window | None = None) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as ds:
            colours = ds.read(window=window)
    return np.all(colours[:3] == np.array(BUILDING, np.uint8)[:, None, None], axis=0)


def _crops(tiles: list[Path], count: int = 2) -> list[tuple[Path, Window]]:
    """Centred crops of the held-out images with the most building pixels."""
    scored = []
    for tile in tiles:
        for mask in sorted((tile / "masks").glob("*.png")):
            buildings = _buildings(mask)
            h, w = buildings.shape
            side = min(SIDE, h, w)
            window = Window((w - side) // 2, (h - side) // 2, side, side)
            scored.append((float(buildings.mean()), mask, window))
    scored.sort(key=lambda s: -s[0])
    return [(mask, window) for _, mask, window in scored[:count]]


def _native(mask_path: Path, window: Window) -> tuple[bytes, np.ndarray]:
    """A held-out crop as a 0.5 m UTM GeoTIFF, and its building mask."""
    image_path = mask_path.parent.parent / "images" / f"{mask_path.stem}.jpg"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(image_path) as ds:
            image = ds.read(window=window)
    return _write(image, NATIVE_M), _buildings(mask_path, window)


def _write(image: np.ndarray, pixel_m: float) -> bytes:
    return geotiff(image, crs="EPSG:32640", transform=from_origin(*ORIGIN, pixel_m, pixel_m))


def _at(native: bytes, mask: np.ndarray, pixel_m: float) -> tuple[bytes, np.ndarray]:
    """The native GeoTIFF and mask resampled by GDAL to ``pixel_m`` (same footprint)."""
    side = round(mask.shape[0] * NATIVE_M / pixel_m)
    down = pixel_m > NATIVE_M
    method = GDALResampling.average if down else GDALResampling.bilinear
    with MemoryFile(native) as mem, mem.open() as ds:
        image = ds.read(out_shape=(ds.count, side, side), resampling=method)
    with MemoryFile(_write(mask[None].astype(np.float32), NATIVE_M)) as mem, mem.open() as ds:
        labels = ds.read(
            1,
            out_shape=(side, side),
            resampling=GDALResampling.average if down else GDALResampling.nearest,
        )
    return _write(image, pixel_m), labels >= 0.5


def _probability(server: LiveServer, model: str, tif: bytes, tmp: Path) -> np.ndarray:
    """Band 1 of the prediction GeoTIFF, synchronous or through a scene job."""
    resp = httpx.post(
        f"{server.url}/predict",
        data={"model": model, "format": "geotiff"},
        files={"image": ("in.tif", tif, "image/tiff")},
        timeout=600,
    )
    if resp.status_code == 202:
        body, _ = follow(server, resp.json()["job_id"], timeout_s=600)
        assert body["state"] == "done", body
        assert body["resampling"]["applied"] is True
        resp = httpx.get(server.url + body["links"]["prediction_geotiff"], timeout=120)
    assert resp.status_code == 200, resp.text
    with MemoryFile(tif) as mem, mem.open() as src, MemoryFile(resp.content) as answer:
        out = answer.open()
        with out:
            assert out.crs == src.crs
            assert out.transform == src.transform
            assert out.shape == src.shape
            return np.asarray(out.read(1))


def _iou(probability: np.ndarray, mask: np.ndarray) -> tuple[int, int]:
    predicted = np.nan_to_num(probability) >= 0.5
    return int((predicted & mask).sum()), int((predicted | mask).sum())


@pytest.mark.slow  # six predictions of up to 1536 x 1536 pixels: about 2 minutes on 2 cores
def test_half_and_double_resolution_score_as_native(
    gsd_server: tuple[LiveServer, str, list[Path]], tmp_path: Path
) -> None:
    server, model, tiles = gsd_server
    totals = {m: [0, 0] for m in (NATIVE_M, 2 * NATIVE_M, NATIVE_M / 2)}
    crops = _crops(tiles)
    for mask_path, window in crops:
        native, mask = _native(mask_path, window)
        for pixel_m in totals:
            tif, labels = (native, mask) if pixel_m == NATIVE_M else _at(native, mask, pixel_m)
            inter, union = _iou(_probability(server, model, tif, tmp_path), labels)
            totals[pixel_m][0] += inter
            totals[pixel_m][1] += union
    iou = {m: inter / union for m, (inter, union) in totals.items()}
    names = [f"{m.parent.parent.name}/{m.stem}" for m, _ in crops]
    print(f"IoU of {model} on held-out {names} by input resolution (m): {iou}")
    assert iou[NATIVE_M] > 0.1, iou  # the model finds buildings at all
    # These are the held-out images with most buildings, whose small buildings lose
    # more at 1 m than the tiles' average (footprints 2.2.0: 0.425 native, 0.319 at
    # 1 m, 0.391 at 0.25 m; 2.1.0: 0.380, 0.344, 0.365): 1 m is held to 0.12 here, as
    # in tests/models/test_shipped_footprints_scales.py, whose slow run holds all 18
    # held-out images to 0.05 at both resolutions.
    assert abs(iou[2 * NATIVE_M] - iou[NATIVE_M]) <= 0.12, iou
    assert abs(iou[NATIVE_M / 2] - iou[NATIVE_M]) <= 0.05, iou
