"""Chip classifiers over whole scenes: a class raster at chip resolution, on a live server.

The model is a plain ONNX chip classifier (``tests.helpers.onnx_graphs``) served
through its drafted sidecar manifest; the scene is a real GeoTIFF of 2000 x 2040
pixels whose last row of chips is partly outside it and whose middle has a
nodata hole. Every chip's class is checked against the same chip cropped and
posted on its own.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rio_cogeo.cogeo import cog_validate

from service.config import Settings
from service.errors import InvalidInput
from service.jobs.record import JobRecord
from service.jobs.store import FILE_NAME, JobStore, open_store
from service.pipeline.scene import SceneRunner
from service.pipeline.scene_grid import SceneOptions
from service.pipeline.scene_read import open_scene
from service.pipeline.stac_validation import validate_item
from service.pipeline.tasks.chip_scene import ChipGrid, attention_file, chip_stride
from service.pipeline.units import (
    FinishPass,
    GridPlanned,
    PartialSums,
    PlanPass,
    Unit,
    UnitPass,
    UnitStored,
    plan_units,
)
from service.raster.decode import describe
from service.raster.georef import Georeference
from service.runtime.manifest import Manifest, OutputSpec, sidecar_path
from service.runtime.manifest_draft import draft_manifest
from tests.helpers.bodies import upload
from tests.helpers.geotiff import ORIGIN, UTM, geotiff, write_geotiff
from tests.helpers.jobs import download, follow, submit
from tests.helpers.onnx_graphs import binary_segmenter, chip_classifier, edited_draft
from tests.helpers.served import served_from
from tests.helpers.server import LiveServer, serving
from tests.helpers.tiles import tile_at

CLASSES = ["reddish", "greenish", "bluish"]
COLOURS = ["#e31a1c", "#33a02c", "#1f78b4"]
CHIP = 64
WIDTH, HEIGHT = 2000, 2040
NODATA = 255
# UTM's 0.5 m pixels (the GeoTIFF helper's): a chip's area on the ground near the
# central meridian, 64 x 64 x 0.25 / 0.9996² m².
CHIP_M2 = CHIP * CHIP * 0.25 / 0.9996**2
# The scene fixture: its GeoTIFF, ``(3, HEIGHT, WIDTH)`` image and mask.
Scene = tuple[Path, np.ndarray, np.ndarray]
# A finished job: its JSON and the folder its files were downloaded into.
Finished = tuple[dict[str, Any], Path]


def _manifest(directory: Path) -> dict[str, Any]:
    model = chip_classifier(directory / "scenes-1.0.0.onnx")
    data = {**draft_manifest(model).manifest, "classes": CLASSES, "class_colors": COLOURS}
    sidecar_path(model).write_text(json.dumps(data))
    return data


def _scene(seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """``(3, HEIGHT, WIDTH)`` uint8 patches of 48 px (across chip edges) and its mask."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(20, 236, (3, -(-HEIGHT // 48), -(-WIDTH // 48)))
    image = np.kron(cells, np.ones((48, 48)))[:, :HEIGHT, :WIDTH]
    image = np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)
    mask = np.full((HEIGHT, WIDTH), 255, np.uint8)
    mask[1000:1100, :700] = 0  # whole chips, and chips more or less than half empty
    return image, mask


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models")
    _manifest(directory)
    # A binary segmenter beside it: no class map, so no min_confidence.
    roofs = binary_segmenter(directory / "roofs-1.0.0.onnx")
    sidecar_path(roofs).write_text(json.dumps(edited_draft(draft_manifest(roofs).manifest)))
    return directory


@pytest.fixture(scope="module")
def live(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with serving(model_dir, tmp_path_factory.mktemp("server")) as server:
        yield server


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Scene:
    image, mask = _scene()
    path = tmp_path_factory.mktemp("scene") / "scene.tif"
    write_geotiff(path, image, mask=mask, tiled=True, blockxsize=256, blockysize=256)
    return path, image, mask


def _run(live: LiveServer, path: Path, out: Path, **fields: str) -> dict[str, Any]:
    """A finished chip scene job's JSON, its files downloaded into ``out``."""
    job = submit(live, [path], model="scenes", **{"async": "true", **fields})
    body, _ = follow(live, job["job_id"], timeout_s=600)
    assert body["state"] == "done", body
    out.mkdir(exist_ok=True)
    for key, url in body["links"].items():
        if key.startswith("file:"):
            download(live, url, out / key[5:])
    return body


@pytest.fixture(scope="module")
def plain(
    live: LiveServer,
    scene: Scene,
    tmp_path_factory: pytest.TempPathFactory,
) -> Finished:
    out = tmp_path_factory.mktemp("plain")
    return _run(live, scene[0], out), out


def _chip(image: np.ndarray, mask: np.ndarray, row: int, col: int) -> tuple[np.ndarray, np.ndarray]:
    """Chip ``(row, col)`` as a 64 x 64 crop; beyond the scene, masked zeros."""
    data = np.zeros((3, CHIP, CHIP), np.uint8)
    valid = np.zeros((CHIP, CHIP), np.uint8)
    part = image[:, row * CHIP : (row + 1) * CHIP, col * CHIP : (col + 1) * CHIP]
    h, w = part.shape[1:]
    data[:, :h, :w] = part
    valid[:h, :w] = mask[row * CHIP : row * CHIP + h, col * CHIP : col * CHIP + w]
    return data, valid


def _posted(
    live: LiveServer, data: np.ndarray, valid: np.ndarray, row: int, col: int
) -> list[float]:
    """The class probabilities of one chip posted alone, georeferenced where it lies."""
    transform = ORIGIN * Affine.translation(col * CHIP, row * CHIP)
    body = geotiff(data, mask=valid, transform=transform)
    resp = httpx.post(f"{live.url}/predict", **upload(body, model="scenes"), timeout=60)
    assert resp.status_code == 200, resp.text
    values: list[float] = resp.json()["prediction"]["layers"][0]["values"]
    return values


@pytest.mark.parametrize("every", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_every_chip_gets_the_class_it_gets_alone(
    live: LiveServer,
    scene: Scene,
    plain: Finished,
    every: bool,
) -> None:
    path, image, mask = scene
    body, files = plain
    rows, cols = -(-HEIGHT // CHIP), -(-WIDTH // CHIP)
    assert body["tiling"] == {"tile_size": CHIP, "overlap": 0, "tiles": rows * cols}
    with rasterio.open(path) as src:
        crs, transform = src.crs, src.transform
    for name in ("class.tif", "probabilities.tif"):
        valid, errors, _ = cog_validate(files / name)
        assert valid, errors
        with rasterio.open(files / name) as out:
            assert out.crs == crs
            assert out.transform == transform * Affine.scale(CHIP)
            assert (out.width, out.height) == (cols, rows)
    with rasterio.open(files / "class.tif") as out:
        assert (out.dtypes[0], out.nodata) == ("uint8", NODATA)
        assert [out.colormap(1)[i][:3] for i in range(3)] == [
            tuple(int(c[k : k + 2], 16) for k in (1, 3, 5)) for c in COLOURS
        ]
        assert out.tags(1)["CLASSES"] == ",".join(CLASSES)
        assert [out.tags(1)[f"CLASS_{i}"] for i in range(3)] == CLASSES
        classes = out.read(1)
    with rasterio.open(files / "probabilities.tif") as out:
        assert [out.tags(b)["CLASS"] for b in (1, 2, 3)] == CLASSES
        probs = out.read()
    # Each chip at least half valid against itself posted alone (981 synchronous requests,
    # or some of them); the others get no class.
    chips = {(r, c): _chip(image, mask, r, c) for r in range(rows) for c in range(cols)}
    full = [rc for rc, (_, valid) in chips.items() if (valid > 0).mean() >= 0.5]
    if not every:  # the rows around the hole, the last row and column, 1 chip in 20 of the rest
        picked = {rc for rc in full if rc[0] in (15, 17, rows - 1) or rc[1] == cols - 2}
        full = [rc for i, rc in enumerate(full) if rc in picked or i % 20 == 0]
    with ThreadPoolExecutor(4) as pool:
        alone = dict(
            zip(full, pool.map(lambda rc: _posted(live, *chips[rc], *rc), full), strict=True)
        )
    for (r, c), (_, valid) in chips.items():
        if (valid > 0).mean() < 0.5:  # mostly nodata, or beyond the scene: no class
            assert classes[r, c] == NODATA, (r, c)
            assert np.isnan(probs[:, r, c]).all()
            continue
        if (r, c) not in alone:
            continue
        np.testing.assert_allclose(probs[:, r, c], alone[r, c], atol=1e-6)
        assert classes[r, c] == int(np.argmax(alone[r, c])), (r, c)
    empty = int((classes == NODATA).sum())
    # The last column is 16 of 64 pixels inside; the last row 56 (classified); in the hole,
    # 11 chips of row 16 are (almost) empty, rows 15 and 17 more than half full.
    assert empty == rows + 11
    assert len(set(classes[classes != NODATA].tolist())) == 3
    # Chip counts and areas per class in the job's JSON.
    layer = body["prediction"]["layers"][0]
    assert (layer["name"], layer["stride"], layer["shape"]) == ("class", CHIP, [rows, cols])
    assert "min_confidence" not in layer
    for i, entry in enumerate(layer["class_statistics"]):
        assert entry["pixels"] == int((classes == i).sum())
        assert entry["area_m2"] == pytest.approx(entry["pixels"] * CHIP_M2, rel=1e-4)


def test_attention_maps_are_mosaicked_at_their_own_resolution(
    live: LiveServer, scene: Scene, plain: Finished
) -> None:
    path, image, mask = scene
    body, files = plain
    rows, cols = -(-HEIGHT // CHIP), -(-WIDTH // CHIP)
    with rasterio.open(path) as src:
        transform = src.transform
    attention = {a["name"]: a for a in body["attention"]}
    # Tokens: 4 x 4 patches of 16 pixels per chip; the gate: one value per 4 x 4 pixels.
    for name, cell in (("tokens", 16), ("gate", 4)):
        assert attention[name]["stride"] == cell
        assert attention[name]["shape"] == [rows * CHIP // cell, cols * CHIP // cell]
        with rasterio.open(files / f"attention_{name}.tif") as out:
            assert out.transform == transform * Affine.scale(cell)
            assert [out.height, out.width] == attention[name]["shape"]
        one = httpx.get(live.url + attention[name]["url"], params={"format": "geotiff"}, timeout=60)
        assert one.status_code == 200, one.text
        with rasterio.MemoryFile(one.content) as mem, mem.open() as got:
            assert got.transform == transform * Affine.scale(cell)
            assert [got.height, got.width] == attention[name]["shape"]
            tiff = got.read(1)
        as_json = httpx.get(live.url + attention[name]["url"], timeout=60).json()
        values = np.asarray(as_json["values"], np.float32)  # null (no data) as NaN
        np.testing.assert_array_equal(values, tiff)
        georef = as_json["georeference"]
        assert Affine(*georef["transform"][:6]) == transform * Affine.scale(cell)
        assert [georef["height"], georef["width"]] == attention[name]["shape"]
    # Chip (3, 5)'s token weights are those it gets alone, averaged over each patch.
    data, valid = _chip(image, mask, 3, 5)
    posted = httpx.post(
        f"{live.url}/predict", **upload(geotiff(data, mask=valid), model="scenes"), timeout=60
    ).json()
    url = next(a["url"] for a in posted["attention"] if a["name"] == "tokens")
    alone = np.asarray(httpx.get(live.url + url, timeout=60).json()["values"], np.float32)
    with rasterio.open(files / "attention_tokens.tif") as out:
        mosaic = out.read(1)
    np.testing.assert_allclose(mosaic[12:16, 20:24], alone[::16, ::16], atol=1e-6)
    # Maps of different resolutions make no single GeoTIFF.
    both = httpx.get(f"{live.url}/attention/{body['job_id']}", params={"format": "geotiff"})
    assert both.status_code == 422
    assert "different resolutions" in both.json()["error"]["message"]


def test_maps_and_stac_of_a_chip_scene(live: LiveServer, plain: Finished) -> None:
    body, _ = plain
    job = body["job_id"]
    tilejson = httpx.get(f"{live.url}/jobs/{job}/tilejson/class.json", timeout=60)
    assert tilejson.status_code == 200, tilejson.text
    legend = tilejson.json()["legend"]["classes"]
    assert [(c["name"], c["color"]) for c in legend] == list(zip(CLASSES, COLOURS, strict=True))
    lon, lat, zoom = tilejson.json()["center"]
    z, x, y = tile_at(lon, lat, zoom)
    for layer in ("class", "probabilities:bluish", "tokens"):
        tile = httpx.get(f"{live.url}/jobs/{job}/tiles/{layer}/{z}/{x}/{y}.png", timeout=60)
        assert tile.status_code == 200, tile.text
        assert tile.headers["content-type"] == "image/png"
    stac = httpx.get(f"{live.url}/jobs/{job}/stac", timeout=60)
    assert stac.status_code == 200, stac.text
    item = stac.json()
    validate_item(item)
    assert {"class", "probabilities", "attention_tokens", "attention_gate"} <= set(item["assets"])
    bands = item["assets"]["class"]["bands"]
    assert bands[0]["raster:spatial_resolution"] == pytest.approx(0.5 * CHIP, rel=1e-3)


def test_min_confidence_leaves_unsure_chips_without_a_class(
    live: LiveServer,
    scene: Scene,
    plain: Finished,
    tmp_path: Path,
) -> None:
    _, files = plain
    with rasterio.open(files / "class.tif") as out:
        before = out.read(1)
    with rasterio.open(files / "probabilities.tif") as out:
        probs = out.read()
    top = np.nanmax(np.where(np.isnan(probs), -1, probs), axis=0)
    lowest = float(np.median(top[before != NODATA]))
    body = _run(live, scene[0], tmp_path, min_confidence=f"{lowest!r}")
    layer = body["prediction"]["layers"][0]
    assert layer["min_confidence"] == pytest.approx(lowest)
    with rasterio.open(tmp_path / "class.tif") as out:
        after = out.read(1)
    with rasterio.open(tmp_path / "probabilities.tif") as out:
        np.testing.assert_array_equal(out.read(), probs)  # probabilities unchanged
    unsure = (before != NODATA) & (top < lowest)
    assert unsure.sum() > 100
    np.testing.assert_array_equal(after, np.where(unsure, NODATA, before))
    assert sum(s["pixels"] for s in layer["class_statistics"]) == int((after != NODATA).sum())


@pytest.mark.parametrize(
    ("model", "fields", "words"),
    [
        ("scenes", {"min_confidence": "1.5"}, "min_confidence must be from 0 to 1"),
        ("scenes", {"min_confidence": "-0.1", "async": "true"}, "min_confidence must be from"),
        ("scenes", {"min_confidence": "sure"}, "min_confidence must be a number"),
        ("scenes", {"min_confidence": "nan"}, "min_confidence must be from 0 to 1"),
        ("roofs", {"min_confidence": "0.5"}, "min_confidence: model 'roofs:1.0.0' makes no"),
        ("scenes", {"chip_stride": "48", "async": "true"}, "chip_stride 48 does not fit"),
        ("scenes", {"tile_size": "128", "async": "true"}, "tile_size: model 'scenes:1.0.0'"),
        ("scenes", {"overlap": "16", "async": "true"}, "overlap: a chip classifier"),
    ],
)
def test_bad_options_are_refused_naming_the_field(
    live: LiveServer, model: str, fields: dict[str, str], words: str
) -> None:
    data = geotiff(np.full((3, CHIP, CHIP), 90, np.uint8))
    resp = httpx.post(f"{live.url}/predict", **upload(data, model=model, **fields), timeout=60)
    assert resp.status_code == 422, resp.text
    assert words in resp.json()["error"]["message"]


def test_a_json_body_names_an_out_of_range_min_confidence(live: LiveServer) -> None:
    image = np.full((3, CHIP, CHIP), 90.0).tolist()
    resp = httpx.post(
        f"{live.url}/predict",
        json={"model": "scenes", "image": image, "min_confidence": 2},
        timeout=60,
    )
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"]["message"].startswith("min_confidence")


def test_a_chip_below_min_confidence_says_so(live: LiveServer) -> None:
    chip = np.full((3, CHIP, CHIP), 90, np.uint8)
    chip[2] = 110  # bluish, but not by much
    sure = httpx.post(f"{live.url}/predict", **upload(geotiff(chip), model="scenes"), timeout=60)
    layer = sure.json()["prediction"]["layers"][0]
    assert layer["description"].startswith("most probable: bluish")
    assert "min_confidence" not in layer
    unsure = httpx.post(
        f"{live.url}/predict",
        **upload(geotiff(chip), model="scenes", min_confidence="0.9"),
        timeout=60,
    )
    layer = unsure.json()["prediction"]["layers"][0]
    assert layer["min_confidence"] == 0.9
    assert layer["description"].startswith("no class: the most probable, bluish")
    assert layer["values"] == sure.json()["prediction"]["layers"][0]["values"]


def test_a_chip_stride_centres_each_class_pixel_in_its_chip(
    live: LiveServer, tmp_path: Path
) -> None:
    image, _ = _scene(seed=8)
    image = image[:, :320, :320]
    path = tmp_path / "small.tif"
    write_geotiff(path, image)
    body = _run(live, path, tmp_path / "out", chip_stride="32")
    assert body["tiling"] == {"tile_size": CHIP, "overlap": 32, "tiles": 100}
    with rasterio.open(tmp_path / "out" / "probabilities.tif") as out:
        assert out.transform == ORIGIN * Affine.scale(32)
        probs = out.read()
    with rasterio.open(tmp_path / "out" / "attention_tokens.tif") as out:
        assert (out.width, out.height) == (20, 20)
    # Class pixel (4, 6) stands for pixels 128-160 x 192-224: chip 112-176 x 176-240.
    chip = image[:, 112:176, 176:240]
    transform = ORIGIN * Affine.translation(176, 112)
    resp = httpx.post(
        f"{live.url}/predict",
        **upload(geotiff(chip, transform=transform), model="scenes"),
        timeout=60,
    )
    alone = resp.json()["prediction"]["layers"][0]["values"]
    np.testing.assert_allclose(probs[:, 4, 6], alone, atol=1e-6)


def test_the_grid_scales_the_transform_and_pads_beyond_the_raster(tmp_path: Path) -> None:
    georef = Georeference(CRS.from_string(UTM).to_wkt(), tuple(ORIGIN)[:6], 100, 70)  # type: ignore[arg-type]
    grid = ChipGrid(70, 100, 32, 16)
    assert (grid.rows, grid.cols, grid.offset, len(grid)) == (5, 7, 8, 35)
    cells = grid.georef(georef, 4)
    assert (cells.width, cells.height) == (28, 20)
    assert Affine(*cells.transform) == ORIGIN * Affine.scale(4)
    image = np.arange(3 * 70 * 100, dtype=np.uint16).reshape(3, 70, 100)
    path = tmp_path / "g.tif"
    write_geotiff(path, image)
    with open_scene(path) as ds:
        info = describe(ds)
        data, valid = grid.read_row(ds, info, 0, True)
    # Row 0 starts 8 pixels above the raster and 8 left of it.
    assert data.shape == (3, 32, (7 - 1) * 16 + 32)
    assert not valid[:8].any()
    assert not valid[:, :8].any()
    assert valid[8:, 8:108].all()
    assert not valid[:, 108:].any()
    np.testing.assert_array_equal(data[:, 8:, 8:108], image[:, :24, :])


def test_attention_cogs_are_named_after_their_outputs_where_a_store_keeps_such_a_name() -> None:
    def spec(name: str) -> OutputSpec:
        return OutputSpec(name, "attention", "spatial", ["batch", 1, 8, 8])

    long = "g" * 60  # a store's name on its own, too long inside a file's name
    named = [attention_file(i, spec(n)) for i, n in enumerate(["tokens", "a/b", long])]
    assert named == ["attention_tokens.tif", "attention_1.tif", "attention_2.tif"]
    assert all(FILE_NAME.match(name) for name in named)


@pytest.mark.parametrize(
    ("options", "words"),
    [
        (SceneOptions(chip_stride=65), "chip_stride 65 does not fit chips of 64 pixels"),
        (SceneOptions(chip_stride=16), "largest first: 64, 32"),
        (SceneOptions(tile_size=32), "tile_size"),
        (SceneOptions(overlap=8), "give chip_stride instead"),
    ],
)
def test_chip_options_are_checked_before_a_job_is_accepted(
    tmp_path: Path, options: SceneOptions, words: str
) -> None:
    data = _manifest(tmp_path)
    manifest = Manifest.from_dict(data)
    assert chip_stride(manifest, SceneOptions(chip_stride=32)) == (64, 32)
    with pytest.raises(InvalidInput, match=None) as caught:
        chip_stride(manifest, options)
    assert words in str(caught.value)
    # A grid of 8 x 2 patches (8 x 32 pixels each) makes no square cells to mosaic.
    data["outputs"][1]["grid"] = [8, 2]
    with pytest.raises(InvalidInput, match="with square patches where a token grid"):
        chip_stride(Manifest.from_dict(data), SceneOptions())


def _scene_jobs(
    tmp_path: Path, seed: int, rows: int, cols: int
) -> tuple[Path, JobStore, Callable[[], JobRecord]]:
    """A chip model's folder, a job store and a maker of stride-32 jobs on a real scene."""
    models = tmp_path / "models"
    models.mkdir()
    _manifest(models)
    image, mask = _scene(seed=seed)
    scene = tmp_path / "scene.tif"
    write_geotiff(scene, image[:, :rows, :cols], mask=mask[:rows, :cols])
    store = open_store(Settings(job_dir=tmp_path / "jobs"))
    model = {"name": "scenes", "version": "1.0.0", "task": "image_classification"}

    def job() -> JobRecord:
        record = store.new_record(model, "raster", None)
        options = SceneOptions(chip_stride=32).to_json()
        record.params = {"model": "scenes:1.0.0", "inputs": ["input_0.tif"], "options": options}
        store.workspace(record).mkdir(parents=True, exist_ok=True)
        shutil.copy(scene, store.workspace(record) / "input_0.tif")
        return record

    return models, store, job


def test_units_of_a_shared_queue_write_what_a_whole_run_writes(tmp_path: Path) -> None:
    models, store, job = _scene_jobs(tmp_path, seed=3, rows=300, cols=420)

    def nothing(done: int, total: int) -> None:
        pass

    async def main() -> tuple[JobRecord, JobRecord]:
        async with served_from(models, "scenes") as served:
            runner = SceneRunner(store, timeout_s=30, in_flight_tiles=4)
            whole = job()
            await runner.run(whole, served, nothing, lambda: False)
            shared = job()
            with pytest.raises(GridPlanned) as planned:
                await runner.run(shared, served, nothing, lambda: False, PlanPass())
            units = plan_units(planned.value.grid, 3 * 14)  # 3 rows of 14 chips each
            assert [(u.first, u.stop) for u in units] == [(0, 3), (3, 6), (6, 9), (9, 10)]
            saved: dict[int, bytes] = {}
            for unit in reversed(units):  # in any order, as replicas finish them
                save = lambda p, i=unit.index: saved.__setitem__(i, p.to_bytes())  # noqa: E731
                with pytest.raises(UnitStored):
                    await runner.run(shared, served, nothing, lambda: False, UnitPass(unit, save))
            load = lambda u: PartialSums.from_bytes(saved[u.index])  # noqa: E731
            await runner.run(shared, served, nothing, lambda: False, FinishPass(units, load))
            return whole, shared

    whole, shared = asyncio.run(main())
    assert [la.public() for la in shared.layers] == [la.public() for la in whole.layers]
    assert shared.tiling == whole.tiling
    files = ["class.tif", "probabilities.tif", "attention_tokens.tif", "attention_gate.tif"]
    for name in files:
        with (
            rasterio.open(store.workspace(whole) / name) as a,
            rasterio.open(store.workspace(shared) / name) as b,
        ):
            assert (a.transform, a.shape) == (b.transform, b.shape)
            np.testing.assert_array_equal(a.read(), b.read())
    with rasterio.open(store.workspace(whole) / "class.tif") as out:
        assert out.shape == (10, 14)
        assert (out.read(1) != NODATA).sum() > 100


def test_a_cancel_while_a_unit_is_loaded_returns_only_once_the_load_is_over(
    tmp_path: Path,
) -> None:
    # The pass aborts its outputs as soon as it is cancelled: a unit still being
    # loaded or written on its thread would then write into a closed file.
    models, store, job = _scene_jobs(tmp_path, seed=4, rows=100, cols=140)
    record = job()
    loading = threading.Event()
    running = [0]

    def nothing(done: int, total: int) -> None:
        pass

    async def main() -> int:
        async with served_from(models, "scenes") as served:
            runner = SceneRunner(store, timeout_s=30, in_flight_tiles=4)
            with pytest.raises(GridPlanned) as planned:
                await runner.run(record, served, nothing, lambda: False, PlanPass())
            units = plan_units(planned.value.grid, 100)
            saved: list[bytes] = []
            with pytest.raises(UnitStored):
                await runner.run(
                    record,
                    served,
                    nothing,
                    lambda: False,
                    UnitPass(units[0], lambda p: saved.append(p.to_bytes())),
                )

            def slow_load(unit: Unit) -> PartialSums:
                running[0] += 1
                loading.set()
                time.sleep(0.3)
                running[0] -= 1
                return PartialSums.from_bytes(saved[0])

            task = asyncio.ensure_future(
                runner.run(record, served, nothing, lambda: False, FinishPass(units, slow_load))
            )
            await asyncio.to_thread(loading.wait, 5)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            return running[0]

    assert asyncio.run(main()) == 0
