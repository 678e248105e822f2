"""The footprints model card's figures, recomputed from an exported model with ONNX Runtime.

``python -m models.footprints_card MODEL.onnx [--holdout 'Tile 1' ...]`` runs whole
images as the server does (reflection padding to the size multiple, each image's
own band means) and prints JSON: pixel IoU, building F1 and the gates' contrast
inside / outside buildings on the held-out Dubai tiles (pooled and per tile),
the pixel IoU on every other tile (how well the model fits its training data),
the share of each forest negative called building at its native 0.1 m and
shrunk 5x (about 0.5 m), and on the snowy conifers of ``cogeo.tif``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import rasterio
from rasterio.windows import Window

from models.data.footprint_sources import load_negatives, load_pair, pair_folder
from models.data.model_grid import grid_factor, predict_on_model_grid
from models.data.rasters import MaskRule, parse_colour
from models.metrics import GateContrast, footprint_scores, gate_contrast
from service.runtime.manifest import MANIFEST_KEY, Manifest

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BUILDING = "#3C1098"
# Ground resolutions of the data, metres per pixel (from the data's README).
DUBAI_GSD_M = 0.5
FOREST_GSD_M = 0.1


def run_image(session: ort.InferenceSession, image: np.ndarray) -> list[np.ndarray]:
    """Probability ``(H, W)`` then each gate cut to whole cells, as the server pads."""
    _, h, w = image.shape
    x = image.astype(np.float32)[None]
    band_mean = x.mean(axis=(2, 3))
    m = _manifest(session).input.size_multiple or 16
    x = np.pad(x, ((0, 0), (0, 0), (0, -h % m), (0, -w % m)), mode="reflect")
    probability, *gates, _ = session.run(None, {"image": x, "band_mean": band_mean})
    out = [probability[0, 0, :h, :w]]
    for level, g in enumerate(gates, start=1):
        s = 2 ** (level - 1)
        out.append(g[0, 0, : h // s, : w // s])
    return out


def run_at(session: ort.InferenceSession, image: np.ndarray, factor: float) -> list[np.ndarray]:
    """:func:`run_image` on the model's grid (``factor`` model pixels per image pixel),
    answered on the image's grid as the server answers a georeferenced input."""

    def predict(x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        probability, *gates = run_image(session, x)
        return probability, gates

    probability, gates = predict_on_model_grid(predict, image, factor)
    _, h, w = image.shape
    return [probability, *(g[: h // 2**k, : w // 2**k] for k, g in enumerate(gates))]


def _manifest(session: ort.InferenceSession) -> Manifest:
    """The manifest embedded in the model."""
    return Manifest.from_json(session.get_modelmeta().custom_metadata_map[MANIFEST_KEY])


def model_gsd(session: ort.InferenceSession) -> float | None:
    """The ``input.gsd_m`` of the manifest embedded in the model."""
    return _manifest(session).input.gsd_m


def shrink(image: np.ndarray, factor: int) -> np.ndarray:
    """``(C, H, W)`` uint8 averaged over ``factor`` x ``factor`` blocks (edges cut)."""
    c, h, w = image.shape
    h, w = h // factor * factor, w // factor * factor
    blocks = image[:, :h, :w].reshape(c, h // factor, factor, w // factor, factor)
    return np.round(blocks.mean(axis=(2, 4))).astype(np.uint8)


def _scores(session: ort.InferenceSession, items: Sequence[Any]) -> dict[str, Any]:
    preds, truths = [], []
    contrasts: list[GateContrast] = []
    factor = grid_factor(DUBAI_GSD_M, model_gsd(session))
    for item in items:
        probability, *gates = run_at(session, item.image, factor)
        preds.append(probability >= 0.5)
        truths.append(item.mask.astype(bool))
        contrasts = contrasts or [GateContrast() for _ in gates]
        for k, gate in enumerate(gates):
            s = 2**k
            mask = item.mask[: gate.shape[0] * s, : gate.shape[1] * s]
            contrasts[k] = contrasts[k] + gate_contrast(gate, mask)
    out: dict[str, Any] = {k: round(v, 4) for k, v in footprint_scores(preds, truths).items()}
    out.update({f"gate_{k}_ratio": round(c.ratio, 3) for k, c in enumerate(contrasts, start=1)})
    return out


def card_figures(model: Path, holdout: Sequence[str], threads: int = 2) -> dict[str, Any]:
    """Every figure of the card, as plain data."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    rule = MaskRule(color=parse_colour(BUILDING))
    tiles: dict[str, list[Any]] = {}
    for image, mask, group in pair_folder(SHARED / "footprints" / "dubai"):
        tiles.setdefault(group, []).append(load_pair(image, mask, rule, group))
    held = [item for name in holdout for item in tiles[name]]
    figures: dict[str, Any] = {"held_out": _scores(session, held)}
    figures["held_out_by_tile"] = {name: _scores(session, tiles[name]) for name in holdout}
    figures["other_tiles_pixel_iou"] = {
        name: _scores(session, items)["pixel_iou"]
        for name, items in sorted(tiles.items())
        if name not in holdout
    }
    forests: dict[str, Any] = {}
    gsd = model_gsd(session)
    for item in load_negatives([SHARED / "footprints" / "negatives"]):
        # As is: how a non-georeferenced 0.1 m image is run. Resampled: how the
        # server runs a georeferenced one. Shrunk 5x: the same forest at ~0.5 m.
        shares = {
            "native_0.1m": run_image(session, item.image),
            "resampled_to_model": run_at(session, item.image, grid_factor(FOREST_GSD_M, gsd)),
            "shrunk_5x": run_at(session, shrink(item.image, 5), grid_factor(5 * FOREST_GSD_M, gsd)),
        }
        forests[item.name] = {k: round(float((v[0] >= 0.5).mean()), 4) for k, v in shares.items()}
    figures["forest_building_share"] = forests
    with rasterio.open(SHARED / "geotiff" / "cogeo.tif") as ds:
        snow = np.asarray(ds.read(window=Window(0, 0, 512, 512)))
    # cogeo.tif is 0.6 m a pixel.
    figures["cogeo_top_left_512_building_share"] = round(
        float((run_at(session, snow, grid_factor(0.6, gsd))[0] >= 0.5).mean()), 4
    )
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="exported footprints ONNX model")
    parser.add_argument(
        "--holdout",
        action="append",
        default=None,
        help="held-out Dubai tile (repeatable; default 'Tile 1' and 'Tile 3')",
    )
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    args = parser.parse_args(argv)
    holdout = args.holdout or ["Tile 1", "Tile 3"]
    print(json.dumps(card_figures(args.model, holdout, args.threads), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
