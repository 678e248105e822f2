"""``python -m models.footprints_card`` gives the shipped model's held-out figures."""

from __future__ import annotations

import pytest

from models.export import read_manifest
from models.footprints_card import SHARED, card_figures
from tests.models.test_shipped_footprints import HELD_OUT_TILES, SHIPPED


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "footprints").exists(), reason="shared data not present")
def test_card_figures_agree_with_the_training_run() -> None:
    figures = card_figures(SHIPPED, HELD_OUT_TILES)
    # The trainer scored the same images with torch; ONNX Runtime agrees closely.
    metrics = read_manifest(SHIPPED).metrics
    held = figures["held_out"]
    assert held["pixel_iou"] == pytest.approx(metrics["pixel_iou"], abs=2e-3)
    assert held["gate_1_ratio"] == pytest.approx(metrics["gate_1_ratio"], rel=0.01)
    assert set(figures["held_out_by_tile"]) == set(HELD_OUT_TILES)
    assert not set(figures["other_tiles_pixel_iou"]) & set(HELD_OUT_TILES)
    assert len(figures["forest_building_share"]) == 3
    assert 0.0 <= figures["cogeo_top_left_512_building_share"] <= 1.0
