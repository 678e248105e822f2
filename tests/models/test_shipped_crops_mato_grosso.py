"""The shipped Mato Grosso crops model (MODIS, 6 bands) on its real held-out samples:
held out by location, then with unflagged clouds on random dates."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from models.data.crop_clouds import with_clouds
from models.data.crop_npz import read_crop_npz
from models.data.crop_split import split_by_location
from models.data.crops import CropSeries
from models.export import read_manifest
from models.train.crops import classification_metrics, cloud_attention_ratio
from service.runtime.manifest import Manifest

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "models" / "shipped" / "crops-mato-grosso-1.0.0.onnx"
MATO_GROSSO = REPO.parent / "shared" / "data" / "crops" / "mato_grosso_modis.npz"
# Training put its clouds on held-out series with seed 1_000_003; these differ.
FRESH_CLOUD_SEED = 20_261_202


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return read_manifest(SHIPPED)


@pytest.fixture(scope="module")
def held_out(manifest: Manifest) -> CropSeries:
    if not MATO_GROSSO.is_file():
        pytest.fail(f"shared data not found at {MATO_GROSSO}")
    data = read_crop_npz(MATO_GROSSO)
    training = manifest.training
    split = split_by_location(data, training["held_out"], training["block_deg"], training["seed"])
    return data.subset(split.test)


def _run(data: CropSeries) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(SHIPPED), providers=["CPUExecutionProvider"])
    probabilities, attention = session.run(
        ["probabilities", "attention"],
        {"series": data.series, "days": data.days, "valid": data.valid},
    )
    return probabilities, attention


def test_manifest_describes_the_modis_bands_and_location_held_out_figures(
    manifest: Manifest,
) -> None:
    assert SHIPPED.stat().st_size <= 20 * 2**20
    assert manifest.ref == "crops-mato-grosso:1.0.0"
    assert manifest.input.bands == ["MIR", "BLUE", "NIR", "RED", "EVI", "NDVI"]
    assert len(manifest.classes) == 9
    assert manifest.input.value_range[0] < 0  # NDVI and EVI x 10000 run negative
    assert "uint16" not in manifest.input.accepted_dtypes
    assert "held out by location" in manifest.training["data"]
    assert manifest.training["wall_time_s"] <= 15 * 60
    assert manifest.metrics["overall_accuracy"] >= 0.9
    assert manifest.metrics["macro_f1"] >= 0.85
    assert manifest.metrics["cloud_attention_ratio"] <= 0.5


def test_held_out_locations_score_what_the_manifest_says(
    manifest: Manifest, held_out: CropSeries
) -> None:
    assert len(held_out) == manifest.metrics["held_out_samples"]
    probabilities, _ = _run(held_out)
    metrics = classification_metrics(held_out.labels, probabilities.argmax(1), held_out.class_names)
    assert metrics["overall_accuracy"] == pytest.approx(manifest.metrics["overall_accuracy"])
    assert metrics["macro_f1"] == pytest.approx(manifest.metrics["macro_f1"])


def test_unflagged_clouds_get_at_most_half_the_attention_of_clean_dates(
    held_out: CropSeries,
) -> None:
    clouded = with_clouds(held_out, FRESH_CLOUD_SEED, 0.2)
    assert clouded.cloudy is not None
    assert clouded.cloudy.sum() > 1000  # about a fifth of 423 x 23 dates
    probabilities, attention = _run(clouded)
    assert cloud_attention_ratio(attention, clouded.valid, clouded.cloudy) <= 0.5
    accuracy = float((probabilities.argmax(1) == clouded.labels).mean())
    assert accuracy >= 0.9
    # The same series without clouds: the weight the clouds lost went to clean dates.
    _, clean_attention = _run(held_out)
    weight = attention.mean(axis=1)
    clean_weight = clean_attention.mean(axis=1)
    assert weight[clouded.cloudy].mean() < 0.5 * clean_weight[clouded.cloudy].mean()
