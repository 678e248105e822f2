"""The shipped footprints model on real imagery it never saw, through ONNX Runtime.

Held out from its training (see ``models/shipped/footprints.md``): the Dubai
folders ``Tile 1`` and ``Tile 3`` and the forest negative ``SOAP_061``. The other
two forest negatives were training negatives; they are checked too, at their
native 0.1 m, a scale the server does not resample plain PNGs from.
"""

from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from models.data.footprint_sources import load_negatives, load_pair, pair_folder
from models.data.model_grid import grid_factor
from models.data.rasters import MaskRule, parse_colour
from models.export import read_manifest
from models.footprints_card import DUBAI_GSD_M, FOREST_GSD_M, model_gsd, run_at, run_image, shrink
from models.metrics import GateContrast, footprint_scores, gate_contrast

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "shipped" / "footprints-2.2.0.onnx"
DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "footprints"
HELD_OUT_TILES = ("Tile 1", "Tile 3")
NEGATIVES = ("SOAP_031", "SOAP_061", "2019_YELL_2_541000_4977000_image_crop")
needs_data = pytest.mark.skipif(not DATA.exists(), reason="shared footprints data not present")


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(SHIPPED), options, providers=["CPUExecutionProvider"])


def test_shipped_file_is_small_enough_to_ship() -> None:
    assert SHIPPED.stat().st_size <= 20 * 1024 * 1024


def test_manifest_describes_the_model() -> None:
    manifest = read_manifest(SHIPPED)
    assert manifest.ref == "footprints:2.2.0"
    assert manifest.task == "segmentation"
    assert manifest.classes == ["building"]
    assert manifest.input.bands == ["red", "green", "blue"]
    assert manifest.input.accepted_dtypes == ["uint8"]
    assert manifest.input.value_range == [0.0, 255.0]
    assert manifest.input.gsd_m == 0.5
    assert manifest.input.normalization.applied == "in_graph"
    assert manifest.input.size_multiple == 16
    assert manifest.prediction.name == "probability"
    assert [o.name for o in manifest.attention] == [
        "gate_1",
        "gate_2",
        "gate_3",
        "gate_4",
        "band_weights",
    ]
    # Gates come at the resolution of their skip connection (the server upsamples).
    assert {o.name: o.stride for o in manifest.outputs} == {
        "probability": 1,
        "gate_1": 1,
        "gate_2": 2,
        "gate_3": 4,
        "gate_4": 8,
        "band_weights": 1,
    }
    # Trained on this 2-core machine within the hour, on real tiles that exclude the held-out ones.
    assert manifest.training["wall_time_s"] <= 60 * 60
    assert manifest.training["held_out"] == "whole groups SOAP_061, Tile 1, Tile 3"
    assert all(t not in manifest.training["data"] for t in (*HELD_OUT_TILES, "SOAP_061"))
    assert set(manifest.metrics) >= {"pixel_iou", "building_f1", "gate_1_ratio"}


def _held_out(session: ort.InferenceSession) -> tuple[dict[str, float], GateContrast]:
    """Scores and the finest gate's contrast over the held-out Dubai tiles."""
    rule = MaskRule(color=parse_colour("#3C1098"))
    preds, truths = [], []
    contrast = GateContrast()
    # On the model's grid and back, as the server answers a georeferenced 0.5 m image.
    factor = grid_factor(DUBAI_GSD_M, model_gsd(session))
    for image_path, mask_path, group in pair_folder(DATA / "dubai"):
        if group not in HELD_OUT_TILES:
            continue
        item = load_pair(image_path, mask_path, rule, group)
        probability, gate_1, *_ = run_at(session, item.image, factor)
        preds.append(probability >= 0.5)
        truths.append(item.mask.astype(bool))
        contrast = contrast + gate_contrast(gate_1, item.mask)
    assert len(preds) == 18
    return footprint_scores(preds, truths), contrast


@pytest.fixture(scope="module")
def held_out(session: ort.InferenceSession) -> tuple[dict[str, float], GateContrast]:
    if not DATA.exists():
        pytest.skip("shared footprints data not present")
    return _held_out(session)


# Known miss, stated in the model card: 2.2.0 reaches pixel IoU 0.33 and building F1
# 0.02 here. strict: the day a model meets the targets, this test says so.
@pytest.mark.xfail(strict=True, reason="footprints 2.2.0 misses the held-out targets (card)")
def test_meets_targets_on_held_out_dubai_tiles(
    held_out: tuple[dict[str, float], GateContrast],
) -> None:
    scores, _ = held_out
    assert scores["pixel_iou"] >= 0.65, scores
    assert scores["building_f1"] >= 0.55, scores


def test_finds_buildings_on_held_out_dubai_tiles_at_all(
    held_out: tuple[dict[str, float], GateContrast],
) -> None:
    # The synthetic-only 1.1.0 scored pixel IoU 0.05 here, 2.0.0 0.25, 2.1.0 0.31, 2.2.0 0.33.
    scores, _ = held_out
    assert scores["pixel_iou"] >= 0.3, scores


def test_the_finest_gate_is_higher_on_held_out_buildings(
    held_out: tuple[dict[str, float], GateContrast],
) -> None:
    _, contrast = held_out
    assert contrast.ratio >= 1.5, contrast


# 2.0.0 marked 10.0% of SOAP_031 and 5.2% of SOAP_061 here, 1.1.0 32-73%; 2.1.0 and 2.2.0 none.
@needs_data
def test_forests_at_their_native_0_1_m_are_not_buildings(session: ort.InferenceSession) -> None:
    negatives = load_negatives([DATA / "negatives"])
    assert sorted(n.name for n in negatives) == sorted(NEGATIVES)
    for item in negatives:
        probability = run_image(session, item.image)[0]
        assert (probability >= 0.5).mean() <= 0.05, item.name


@needs_data
def test_forests_resampled_to_the_model_resolution_are_not_buildings(
    session: ort.InferenceSession,
) -> None:
    # As the server runs them when georeferenced: at 0.1 m, and shrunk 5 x 5 (about
    # 0.5 m). 2.0.0 marked 16-27% of the Sierra Nevada images shrunk.
    gsd = model_gsd(session)
    for item in load_negatives([DATA / "negatives"]):
        for image, image_gsd in ((item.image, FOREST_GSD_M), (shrink(item.image, 5), 0.5)):
            probability = run_at(session, image, grid_factor(image_gsd, gsd))[0]
            assert (probability >= 0.5).mean() <= 0.05, (item.name, image_gsd)
