"""`attnserve train crops --data` on real series of other band sets than Sentinel-2's:
the Mato Grosso MODIS set (6 bands) and its NDVI alone, padded to uneven lengths."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from models.data.crop_npz import read_crop_npz
from models.data.crop_split import spatial_blocks, split_by_location
from models.data.crops import CropSeries
from models.export import read_manifest
from models.train.crops import input_description
from service.cli import main

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MATO_GROSSO = SHARED / "crops" / "mato_grosso_modis.npz"
MODIS_BANDS = ["MIR", "BLUE", "NIR", "RED", "EVI", "NDVI"]


@pytest.fixture(scope="module")
def mato_grosso() -> CropSeries:
    if not MATO_GROSSO.is_file():
        pytest.fail(f"shared data not found at {MATO_GROSSO}")
    return read_crop_npz(MATO_GROSSO)


def write_ndvi_only(data: CropSeries, path: Path) -> CropSeries:
    """Mato Grosso's NDVI band alone, cut to uneven lengths and padded with NaN."""
    ndvi = data.series[..., [data.bands.index("NDVI")]].copy()
    rng = np.random.default_rng(0)
    lengths = rng.integers(8, ndvi.shape[1] + 1, size=len(ndvi))
    start = rng.integers(0, ndvi.shape[1] - lengths + 1)
    t = np.arange(ndvi.shape[1])
    present = (t >= start[:, None]) & (t < (start + lengths)[:, None])
    ndvi[~present] = np.nan
    np.savez(
        path,
        series=ndvi,
        days=data.days.astype(np.int32),
        labels=data.labels,
        class_names=np.array(data.class_names),
        band_names=np.array(["NDVI"]),
        lonlat=data.lonlat,
    )
    return read_crop_npz(path)


def test_ndvi_only_series_of_uneven_length_train_export_and_run(
    tmp_path: Path, mato_grosso: CropSeries
) -> None:
    data_path = tmp_path / "ndvi.npz"
    ndvi = write_ndvi_only(mato_grosso, data_path)
    assert not ndvi.valid.all()  # the NaN padding became invalid dates
    out = tmp_path / "run"
    args = ["train", "crops", "--tiny", "--data", str(data_path), "--out", str(out)]
    assert main([*args, "--threads", "1", "--name", "crops-ndvi"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert "held out by location" in report["training"]["data"]
    onnx_path = tmp_path / "crops-ndvi.onnx"
    assert main(["export", str(out / "crops.pt"), "--out", str(onnx_path)]) == 0

    manifest = read_manifest(onnx_path)
    spec = manifest.input
    assert spec.bands == ["NDVI"]
    assert manifest.classes == list(mato_grosso.class_names)
    assert manifest.outputs[0].shape == ["batch", 9]
    # Normalisation learnt from the valid NDVI values of the training samples.
    split = split_by_location(ndvi, 0.2, 0.5, seed=0)
    train = ndvi.subset(split.train)
    values = train.series[train.valid][:, 0].astype(np.float64)
    assert spec.normalization.mean == pytest.approx([values.mean()], rel=1e-6)
    assert spec.normalization.std == pytest.approx([values.std()], rel=1e-6)
    # NDVI x 10000 runs negative: a range that says so, and no unsigned dtypes.
    lo, hi = spec.value_range
    assert lo <= values.min() < 0 < values.max() <= hi <= 12000
    assert "uint16" not in spec.accepted_dtypes
    assert "int16" in spec.accepted_dtypes
    assert spec.units == "spectral index x 10000"
    assert manifest.metrics["overall_accuracy"] == report["metrics"]["overall_accuracy"]

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    test = ndvi.subset(split.test[:64])
    probabilities, attention = session.run(
        None, {"series": test.series, "days": test.days, "valid": test.valid}
    )
    assert probabilities.shape == (64, 9)
    assert np.isfinite(probabilities).all()  # NaN padding does not leak
    assert np.all(attention[np.broadcast_to(~test.valid[:, None], attention.shape)] == 0)


def test_six_modis_bands_train_with_their_own_names_held_out_by_location(
    tmp_path: Path, mato_grosso: CropSeries
) -> None:
    out = tmp_path / "run"
    args = ["train", "crops", "--tiny", "--data", str(MATO_GROSSO), "--out", str(out)]
    assert main([*args, "--threads", "1", "--block-deg", "1"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    metrics, training = report["metrics"], report["training"]
    for key in ("overall_accuracy", "macro_f1", "cloudy_overall_accuracy", "cloud_attention_ratio"):
        assert 0 <= metrics[key] <= 2
    assert "of 1 x 1 degrees" in training["data"]
    assert training["block_deg"] == 1.0
    assert training["split"] == "auto"
    onnx_path = tmp_path / "crops-modis.onnx"
    assert main(["export", str(out / "crops.pt"), "--out", str(onnx_path)]) == 0
    manifest = read_manifest(onnx_path)
    assert manifest.input.bands == MODIS_BANDS
    assert "6 band(s) (MIR, BLUE" in manifest.description
    assert manifest.input.units == "surface reflectance and spectral indices x 10000"
    # Held out by location: no 1-degree block has samples on both sides.
    split = split_by_location(mato_grosso, 0.2, 1.0, seed=0)
    assert mato_grosso.lonlat is not None
    blocks = spatial_blocks(mato_grosso.lonlat, 1.0)
    assert not set(blocks[split.train]) & set(blocks[split.test])
    assert metrics["held_out_samples"] == len(split.test)


def test_input_description_follows_the_data() -> None:
    rng = np.random.default_rng(0)
    valid = np.ones((5, 4), dtype=bool)

    def describe(series: np.ndarray, bands: tuple[str, ...]) -> dict[str, object]:
        data = CropSeries(
            series=series.astype(np.float32),
            days=np.zeros((5, 4), dtype=np.float32),
            valid=valid,
            labels=np.zeros(5, dtype=np.int64),
            class_names=("a",),
            bands=bands,
        )
        return input_description(data)

    # Reflectance in 0-1 units: floats only, no "x 10000".
    unit = describe(rng.uniform(0.01, 0.6, (5, 4, 2)), ("red", "nir"))
    assert unit["accepted_dtypes"] == ["float32", "float64"]
    assert unit["units"] == "surface reflectance"
    assert unit["value_range"] == [0.0, 0.6]
    # Whole numbers x 10000, all positive: unsigned 16-bit rasters are fine too.
    scaled = describe(np.round(rng.uniform(100, 9000, (5, 4, 2))), ("B4", "B8"))
    assert scaled["accepted_dtypes"] == ["uint16", "int16", "int32", "float32", "float64"]
    assert scaled["units"] == "surface reflectance x 10000"
