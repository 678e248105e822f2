"""A small ViT chip classifier: built, exported with its attention, served over HTTP and /v2.

The model comes as a user's would: its forward returns class probabilities
only; ``export_with_attention`` takes out the last layer's attention of the
class token over the patches, the drafted sidecar manifest (a token grid of
4 x 4 patches) gets class names, and the plain ONNX file is served through it.
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
from torch import nn

from models.export_any import export_with_attention
from service.runtime.manifest import sidecar_path
from service.runtime.manifest_check import check_file
from tests.helpers.bodies import upload
from tests.helpers.geotiff import ORIGIN, UTM, geotiff
from tests.helpers.jobs import follow
from tests.helpers.server import LiveServer, serving
from tests.helpers.v2 import infer_image

pytest.importorskip("tritonclient.http", reason="needs tritonclient[http]")

CLASSES = ["clear", "cloudy", "water"]
SIDE, PATCH = 64, 16
GRID = SIDE // PATCH


class Attention(nn.Module):
    """Multi-head self-attention whose class-token weights pass through a tap to hook."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        # Identity, so that a forward hook sees (B, heads, N): the class token over the patches.
        self.cls_attention = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        weights = (q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5).softmax(dim=-1)
        self.cls_attention(weights[:, :, 0, 1:])
        return self.proj((weights @ v).transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """``(B, 3, 64, 64)`` raw 0-255 in, ``(B, 3)`` class probabilities out; patches of 16."""

    def __init__(self, dim: int = 32, depth: int = 2, heads: int = 2) -> None:
        super().__init__()
        self.patches = nn.Conv2d(3, dim, PATCH, stride=PATCH)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, 1 + GRID * GRID, dim) * 0.5)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, len(CLASSES))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        tokens = self.patches(image / 127.5 - 1.0).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], dim=1) + self.pos
        x = self.blocks(x)
        return self.head(self.norm(x[:, 0])).softmax(dim=-1)


def chip(seed: int) -> np.ndarray:
    """``(3, 64, 64)`` uint8: a bright blob on a darker field."""
    rng = np.random.default_rng(seed)
    image = rng.integers(20, 90, (3, SIDE, SIDE))
    image[:, 8:30, 30:60] += 150
    return image.astype(np.uint8)


def reference(model: Path, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities ``(K,)`` and class-token weights ``(heads, N)`` of one ONNX Runtime run."""
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    probs, weights = session.run(None, {"image": image[None].astype(np.float32)})
    return probs[0], weights[0]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models")
    out = directory / "scenes-0.1.0.onnx"
    torch.manual_seed(0)
    example = torch.rand(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0)) * 255
    draft = export_with_attention(
        TinyViT(),
        {"image": example},
        out,
        ["cls_attention=blocks.1.attn.cls_attention"],
        output_names=["probabilities"],
        # Position embeddings fix the chip: only the batch is dynamic.
        dynamic_axes={"image": {0: "batch"}},
        name="scenes",
        version="0.1.0",
    )
    manifest = draft.manifest
    assert manifest["task"] == "image_classification"
    assert manifest["tensors"][0]["shape"] == ["batch", 3, SIDE, SIDE]
    pred, tokens = manifest["outputs"]
    assert (pred["kind"], pred["shape"]) == ("class_probabilities", ["batch", 3])
    assert (tokens["kind"], tokens["shape"], tokens["grid"]) == (
        "token_grid",
        ["batch", 2, GRID * GRID],
        [GRID, GRID],
    )
    sidecar_path(out).write_text(json.dumps({**manifest, "classes": CLASSES}))
    assert check_file(out) == ("scenes-0.1.0.manifest.json", [])
    return directory


@pytest.fixture(scope="module")
def live(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with serving(model_dir, tmp_path_factory.mktemp("server")) as s:
        yield s


def test_a_chip_gets_its_class_and_the_class_tokens_attention_as_json_and_geotiff(
    live: LiveServer, model_dir: Path
) -> None:
    image = chip(1)
    resp = httpx.post(f"{live.url}/predict", **upload(geotiff(image), model="scenes"), timeout=120)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    want_probs, want_weights = reference(model_dir / "scenes-0.1.0.onnx", image)
    (pred,) = body["prediction"]["layers"]
    assert (pred["kind"], pred["shape"], pred["classes"]) == ("class_probabilities", [3], CLASSES)
    np.testing.assert_allclose(pred["values"], want_probs, atol=1e-5)
    assert CLASSES[int(want_probs.argmax())] in pred["description"]
    (att,) = body["attention"]
    assert (att["name"], att["kind"], att["shape"], att["heads"]) == (
        "cls_attention",
        "token_grid",
        [2, 64, 64],
        2,
    )
    # Mean over heads; each patch's weight over its 16 x 16 pixels.
    cells = want_weights.mean(axis=0).reshape(GRID, GRID)
    want_map = np.kron(cells, np.ones((PATCH, PATCH), np.float32))
    layer = httpx.get(live.url + att["url"], timeout=60).json()
    assert layer["head"] == "mean"
    np.testing.assert_allclose(np.asarray(layer["values"]), want_map, atol=1e-5)
    # One head on request, as JSON and as a GeoTIFF; a head the model lacks is named.
    second = np.kron(want_weights[1].reshape(GRID, GRID), np.ones((PATCH, PATCH), np.float32))
    head = httpx.get(live.url + att["url"], params={"head": 1}, timeout=60).json()
    assert head["head"] == 1
    np.testing.assert_allclose(np.asarray(head["values"]), second, atol=1e-5)
    tiff = httpx.get(live.url + att["url"], params={"head": 1, "format": "geotiff"}, timeout=60)
    with MemoryFile(tiff.content) as mem, mem.open() as src:
        assert src.tags(1)["HEAD"] == "1"
        np.testing.assert_allclose(src.read(1), second, atol=1e-5)
    missing = httpx.get(live.url + att["url"], params={"head": 2}, timeout=60)
    assert missing.status_code == 422
    assert "layer 'cls_attention' has 2 heads, 0 to 1" in missing.json()["error"]["message"]
    one = httpx.get(live.url + att["url"], params={"format": "geotiff"}, timeout=60)
    assert one.status_code == 200
    with MemoryFile(one.content) as mem, mem.open() as src:
        assert (src.crs, src.transform) == (rasterio.crs.CRS.from_string(UTM), ORIGIN)
        np.testing.assert_allclose(src.read(1), want_map, atol=1e-5)
    # The job's GeoTIFF holds the maps: the probabilities are not a raster.
    tiff = httpx.get(live.url + body["links"]["prediction_geotiff"], timeout=60)
    with MemoryFile(tiff.content) as mem, mem.open() as src:
        assert src.count == 1
        np.testing.assert_allclose(src.read(1), want_map, atol=1e-5)


def test_a_chip_of_another_size_is_refused_and_a_scene_is_classified_chip_by_chip(
    live: LiveServer, model_dir: Path
) -> None:
    wide = np.concatenate([chip(5), chip(6)[:, :, :32]], axis=2)  # 96 x 64
    wrong = httpx.post(f"{live.url}/predict", **upload(geotiff(wide), model="scenes"), timeout=60)
    assert wrong.status_code == 422, wrong.text
    assert "64 x 64" in wrong.json()["error"]["message"], wrong.text
    # Four chips side by side as a scene job: a 2 x 2 class raster, each chip's own class.
    chips = [chip(s) for s in (2, 3, 4, 5)]
    image = np.block([[chips[0], chips[1]], [chips[2], chips[3]]])
    job = httpx.post(
        f"{live.url}/predict",
        **upload(geotiff(image), model="scenes", **{"async": "true"}),
        timeout=60,
    )
    assert job.status_code == 202, job.text
    body, _ = follow(live, job.json()["job_id"])
    assert body["state"] == "done", body
    layer = body["prediction"]["layers"][0]
    assert (layer["name"], layer["shape"], layer["stride"]) == ("class", [2, 2], SIDE)
    cog = httpx.get(live.url + body["links"]["file:class.tif"]).content
    with MemoryFile(cog) as mem, mem.open() as src:
        got = src.read(1)
    model = model_dir / "scenes-0.1.0.onnx"
    want = [int(reference(model, c)[0].argmax()) for c in chips]
    assert got.ravel().tolist() == want


def test_the_chip_classifier_answers_over_the_v2_protocol(
    live: LiveServer, model_dir: Path
) -> None:
    images = np.stack([chip(3), chip(4)]).astype(np.float32)
    names = ["probabilities", "cls_attention"]
    meta, got = infer_image(live.url, "scenes", images, names)
    assert [o["name"] for o in meta["outputs"]] == names
    probs, weights = got["probabilities"], got["cls_attention"]
    session = ort.InferenceSession(
        str(model_dir / "scenes-0.1.0.onnx"), providers=["CPUExecutionProvider"]
    )
    want_probs, want_weights = session.run(None, {"image": images})
    assert probs.shape == (2, 3)
    assert weights.shape == (2, 2, GRID * GRID)
    np.testing.assert_allclose(probs, want_probs, atol=1e-5)
    np.testing.assert_allclose(weights, want_weights, atol=1e-5)
