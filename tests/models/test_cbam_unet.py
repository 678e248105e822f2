"""A multi-class CBAM U-Net: built, exported with its attention, served over HTTP and /v2.

The model comes as a user's would: its forward returns class probabilities
only; ``export_with_attention`` takes out the CBAM spatial maps and channel
weights, the drafted sidecar manifest is edited (class names, colours, minimum
confidence, the first block's channel names) and the plain ONNX file is served
through it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
import rasterio
import torch
from rasterio.io import MemoryFile
from rio_cogeo.cogeo import cog_validate

from models.cbam_unet import CAPTURES, build
from models.export_any import export_with_attention
from service.runtime.manifest import sidecar_path
from service.runtime.manifest_check import check_file
from tests.helpers.bodies import upload
from tests.helpers.geotiff import geotiff, write_geotiff
from tests.helpers.jobs import download, follow, submit
from tests.helpers.server import LiveServer, serving
from tests.helpers.v2 import infer_image

pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")

CLASSES = ["water", "forest", "built", "crops"]
COLOURS = ["#1f78b4", "#33a02c", "#e31a1c", "#ffff99"]
MIN_CONFIDENCE = 0.6
NODATA = 255
# 0.5 m pixels of UTM (the GeoTIFF helper's transform): 0.25 m² of map, and on the
# ground at the central meridian 0.25 / 0.9996², UTM's scale factor.
PIXEL_M2 = 0.25 / 0.9996**2
SPATIAL = ["enc1_2_spatial", "enc2_2_spatial", "bottom_2_spatial"]
# The first block's 8 features, named as a user who looked at them might.
FEATURES = [f"edge_{i}" for i in range(4)] + [f"tone_{i}" for i in range(4)]


def landscape(size: int, seed: int = 0) -> np.ndarray:
    """``(3, size, size)`` uint8: patches of colour 32 px across, with some texture."""
    rng = np.random.default_rng(seed)
    cells = -(-size // 32)
    coarse = rng.integers(0, 256, (3, cells, cells))
    patches = np.kron(coarse, np.ones((32, 32)))[:, :size, :size]
    return np.clip(patches + rng.normal(0, 12, patches.shape), 0, 255).astype(np.uint8)


def whole_image_classes(model: Path, image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The class map of one ONNX Runtime run over the whole image: the reference."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (probs,) = session.run(["probabilities"], {"image": image[None].astype(np.float32)})
    best = probs[0].argmax(axis=0)
    top = probs[0].max(axis=0)
    return np.where(valid & (top >= MIN_CONFIDENCE), best, NODATA).astype(np.uint8)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models")
    out = directory / "landcover-0.1.0.onnx"
    example = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255
    draft = export_with_attention(
        build(len(CLASSES)),
        {"image": example},
        out,
        list(CAPTURES),
        output_names=["probabilities"],
        name="landcover",
        version="0.1.0",
    )
    outputs = draft.manifest["outputs"]
    assert [(o["name"], o["kind"], o["stride"]) for o in outputs] == [
        ("probabilities", "class_probabilities", 1),
        ("enc1_2_spatial", "spatial", 1),
        ("enc2_2_spatial", "spatial", 2),
        ("bottom_2_spatial", "spatial", 4),
        ("enc1_2_channel", "channel", 1),
        ("bottom_2_channel", "channel", 1),
    ]
    assert outputs[4]["shape"] == ["batch", 8, 1, 1]
    edited = {
        **draft.manifest,
        "classes": CLASSES,
        "class_colors": COLOURS,
        "min_confidence": MIN_CONFIDENCE,
        "outputs": [*outputs[:4], {**outputs[4], "channels": FEATURES}, outputs[5]],
    }
    sidecar_path(out).write_text(json.dumps(edited))
    assert check_file(out) == ("landcover-0.1.0.manifest.json", [])
    # One class too few is a disagreement the check names.
    wrong = directory / "wrong.json"
    wrong.write_text(json.dumps({**edited, "classes": CLASSES[:3], "class_colors": []}))
    _, problems = check_file(out, wrong)
    assert any("lists 3 classes" in p and "gives 4" in p for p in problems), problems
    wrong.unlink()
    return directory


@pytest.fixture(scope="module")
def live(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # Images over 512 x 512 run as scene jobs.
    with serving(model_dir, tmp_path_factory.mktemp("server"), max_sync_pixels=str(512 * 512)) as s:
        yield s


def test_an_image_gets_a_class_map_with_areas_as_json_and_geotiff(
    live: LiveServer, model_dir: Path
) -> None:
    image = landscape(128)
    mask = np.full((128, 128), 255, np.uint8)
    mask[:, :16] = 0
    data = geotiff(image, mask=mask)
    resp = httpx.post(f"{live.url}/predict", **upload(data, model="landcover"), timeout=120)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    layers = {la["name"]: la for la in body["prediction"]["layers"]}
    assert list(layers) == ["class", "probabilities"]
    cls = layers["class"]
    assert (cls["kind"], cls["dtype"], cls["nodata"], cls["classes"]) == (
        "class",
        "uint8",
        NODATA,
        CLASSES,
    )
    assert layers["probabilities"]["shape"] == [4, 128, 128]
    assert layers["probabilities"]["classes"] == CLASSES
    assert [a["name"] for a in body["attention"]] == [
        *SPATIAL,
        "enc1_2_channel",
        "bottom_2_channel",
    ]
    want = whole_image_classes(model_dir / "landcover-0.1.0.onnx", image, mask > 0)
    stats = cls["class_statistics"]
    assert [s["class"] for s in stats] == CLASSES
    for i, entry in enumerate(stats):
        assert entry["pixels"] == int((want == i).sum())
        assert entry["area_m2"] == pytest.approx(entry["pixels"] * PIXEL_M2, rel=1e-6)
    assert sum(s["pixels"] for s in stats) == int((want != NODATA).sum()) > 0
    assert sum(s["fraction"] for s in stats) == pytest.approx(1.0)
    # The same job as a GeoTIFF: class map, one band per class, the attention maps.
    tiff = httpx.get(live.url + body["links"]["prediction_geotiff"], timeout=60)
    assert tiff.status_code == 200
    with MemoryFile(tiff.content) as mem, mem.open() as src:
        assert src.count == 1 + 4 + 3
        assert "water" in src.descriptions[0]
        assert [src.tags(b)["CLASS"] for b in range(2, 6)] == CLASSES
        got = src.read(1)
        probs = src.read(list(range(2, 6)))
    np.testing.assert_array_equal(np.where(np.isnan(got), NODATA, got).astype(np.uint8), want)
    assert np.isnan(probs[:, :, :16]).all()
    np.testing.assert_allclose(np.nansum(probs, axis=0)[:, 16:], 1.0, atol=1e-4)
    # A coarse CBAM map on its own, on the input's grid, as JSON and as a GeoTIFF.
    url = next(a["url"] for a in body["attention"] if a["name"] == "bottom_2_spatial")
    layer = httpx.get(live.url + url, timeout=60).json()
    assert (layer["stride"], layer["shape"]) == (4, [128, 128])
    one = httpx.get(live.url + url, params={"format": "geotiff"}, timeout=60)
    assert one.status_code == 200
    with MemoryFile(one.content) as mem, mem.open() as src:
        gate = src.read(1)
    assert gate.shape == (128, 128)
    assert np.isnan(gate[:, :16]).all()
    np.testing.assert_allclose(np.asarray(layer["values"], dtype=np.float32), gate, atol=1e-6)
    # Channel weights by name, the graph's own for the image as the server fed it
    # (nodata filled with the normalisation's mean, 0).
    session = ort.InferenceSession(
        str(model_dir / "landcover-0.1.0.onnx"), providers=["CPUExecutionProvider"]
    )
    fed = np.where(mask > 0, image, 0)[None].astype(np.float32)
    want_first, want_deep = session.run(["enc1_2_channel", "bottom_2_channel"], {"image": fed})
    first = httpx.get(f"{live.url}/attention/{body['job_id']}/enc1_2_channel", timeout=60).json()
    assert (first["kind"], first["shape"], first["channels"]) == ("channel", [8], FEATURES)
    assert list(first["weights"]) == FEATURES
    np.testing.assert_allclose(list(first["weights"].values()), want_first.ravel(), atol=1e-5)
    deep = httpx.get(f"{live.url}/attention/{body['job_id']}/bottom_2_channel", timeout=60)
    assert list(deep.json()["weights"]) == [f"channel_{i}" for i in range(16)]
    np.testing.assert_allclose(deep.json()["values"], want_deep.ravel(), atol=1e-5)
    # One weight per feature has no place on a map: a GeoTIFF of it is refused.
    refused = httpx.get(
        f"{live.url}/attention/{body['job_id']}/enc1_2_channel",
        params={"format": "geotiff"},
        timeout=60,
    )
    assert refused.status_code == 422
    assert "no spatial extent" in refused.json()["error"]["message"]


def test_the_model_answers_over_the_v2_protocol(live: LiveServer, model_dir: Path) -> None:
    image = landscape(64, seed=3).astype(np.float32)[None]
    names = ["probabilities", "bottom_2_spatial", "enc1_2_channel"]
    meta, got = infer_image(live.url, "landcover", image, names)
    assert [o["name"] for o in meta["outputs"]][:2] == ["probabilities", "enc1_2_spatial"]
    probs, spatial, channel = (got[n] for n in names)
    session = ort.InferenceSession(
        str(model_dir / "landcover-0.1.0.onnx"), providers=["CPUExecutionProvider"]
    )
    want_probs, want_spatial, want_channel = session.run(names, {"image": image})
    np.testing.assert_allclose(probs, want_probs, atol=1e-5)
    # Raw /v2 outputs keep their own size: the stride-4 map is 16 x 16.
    assert spatial.shape == (1, 1, 16, 16)
    np.testing.assert_allclose(spatial, want_spatial, atol=1e-5)
    # Channel attention comes as the graph gives it, one weight per feature.
    assert channel.shape == (1, 8, 1, 1)
    np.testing.assert_allclose(channel, want_channel, atol=1e-5)


@pytest.mark.parametrize("size", [1024, pytest.param(3000, marks=pytest.mark.slow)])
def test_a_scene_job_gives_class_probability_and_attention_cogs(
    live: LiveServer, model_dir: Path, tmp_path: Path, size: int
) -> None:
    image = landscape(size, seed=1)
    mask = np.full((size, size), 255, np.uint8)
    mask[size // 2 :, : size // 4] = 0
    scene = tmp_path / "scene.tif"
    write_geotiff(scene, image, mask=mask, tiled=True, blockxsize=256, blockysize=256)
    job = submit(live, [scene], model="landcover")
    body, _ = follow(live, job["job_id"], timeout_s=1200)
    assert body["state"] == "done", body
    assert body["tiling"]["tiles"] > 1
    links = body["links"]
    assert {"file:class.tif", "file:probabilities.tif", "file:attention.tif"} <= set(links)
    files = {
        name: download(live, links[f"file:{name}"], tmp_path / name)
        for name in ("class.tif", "probabilities.tif", "attention.tif")
    }
    with rasterio.open(scene) as src:
        crs, transform = src.crs, src.transform
    for path in files.values():
        valid, errors, _ = cog_validate(path)
        assert valid, errors
        with rasterio.open(path) as out:
            assert (out.crs, out.transform, out.width, out.height) == (crs, transform, size, size)
    with rasterio.open(files["class.tif"]) as out:
        assert out.dtypes[0] == "uint8"
        assert out.nodata == NODATA
        colours = out.colormap(1)
        assert [colours[i][:3] for i in range(4)] == [
            tuple(int(c[k : k + 2], 16) for k in (1, 3, 5)) for c in COLOURS
        ]
        assert out.tags(1)["CLASSES"] == ",".join(CLASSES)
        assert out.tags(1)["CLASS_2"] == "built"
        tiled = out.read(1)
    with rasterio.open(files["probabilities.tif"]) as out:
        assert out.count == 4
        assert [out.tags(b)["CLASS"] for b in (1, 2, 3, 4)] == CLASSES
    with rasterio.open(files["attention.tif"]) as out:
        assert out.count == 3
    # Channel weights of the scene: averaged over its tiles, by name.
    channel = {a["name"]: a for a in body["attention"] if a["kind"] == "channel"}
    assert channel["enc1_2_channel"]["channels"] == FEATURES
    assert len(channel["bottom_2_channel"]["values"]) == 16
    assert all(0 < v < 1 for v in channel["enc1_2_channel"]["values"])
    # Per-class areas in the job's JSON are those of the class COG.
    cls = body["prediction"]["layers"][0]
    assert cls["name"] == "class"
    for i, entry in enumerate(cls["class_statistics"]):
        assert entry["pixels"] == int((tiled == i).sum())
        assert entry["area_m2"] == pytest.approx(entry["pixels"] * PIXEL_M2, rel=1e-6)
    assert (tiled[size // 2 :, : size // 4] == NODATA).all()
    # The viewer's map layer of the class map explains it in the model's colours.
    tilejson = httpx.get(f"{live.url}/jobs/{job['job_id']}/tilejson/class.json", timeout=60)
    assert tilejson.status_code == 200, tilejson.text
    legend = tilejson.json()["legend"]["classes"]
    assert [(c["name"], c["color"]) for c in legend] == list(zip(CLASSES, COLOURS, strict=True))
    # Polygons per class, on request: unsimplified, they cover each class's pixels.
    geo = httpx.get(
        live.url + links["footprints"],
        params={"min_area_px": "0", "simplify_px": "0", "crs": "native"},
        timeout=300,
    )
    assert geo.status_code == 200, geo.text
    features = geo.json()["features"]
    for i, name in enumerate(CLASSES):
        mine = [f["properties"] for f in features if f["properties"]["value"] == i]
        assert all(p["class"] == name for p in mine)
        assert sum(p["area_px"] for p in mine) == pytest.approx(int((tiled == i).sum()), abs=1)
    # Tiles with their halo against one run over the whole image.
    whole = whole_image_classes(model_dir / "landcover-0.1.0.onnx", image, mask > 0)
    agree = float((tiled == whole).mean())
    print(f"tiled vs whole-image class map, {size} x {size}: {agree:.5%} of pixels agree")
    assert agree >= 0.999
