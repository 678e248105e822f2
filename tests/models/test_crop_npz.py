"""Reading and writing crop data sets as .npz, with errors that say what is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from models.data.crop_npz import CropDataError, read_crop_npz, write_crop_npz
from models.data.crops import BANDS, make_crop_series


def _save(path: Path, **arrays: Any) -> Path:
    np.savez(path, **arrays)
    return path


def _arrays(n: int = 4, t: int = 6, c: int = len(BANDS)) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    return {
        "series": rng.uniform(0, 5000, size=(n, t, c)).astype(np.float32),
        "days": np.sort(rng.integers(0, 365, size=(n, t)), axis=1),
        "labels": np.array([0, 1, 2, 1])[:n],
    }


def test_round_trip_keeps_everything_but_the_cloud_mask(tmp_path: Path) -> None:
    data = make_crop_series(30, seed=2)
    path = tmp_path / "crops.npz"
    write_crop_npz(path, data)
    back = read_crop_npz(path, bands=BANDS)
    np.testing.assert_array_equal(back.series, data.series)
    np.testing.assert_array_equal(back.days, data.days)
    np.testing.assert_array_equal(back.valid, data.valid)
    np.testing.assert_array_equal(back.labels, data.labels)
    assert back.class_names == data.class_names
    assert back.bands == BANDS
    assert back.cloudy is None


def test_optional_arrays_get_sensible_defaults(tmp_path: Path) -> None:
    back = read_crop_npz(_save(tmp_path / "min.npz", **_arrays()), bands=BANDS)
    assert back.valid.all()
    assert back.valid.shape == (4, 6)
    assert back.class_names == ("class_0", "class_1", "class_2")
    assert back.bands == BANDS
    assert back.days.dtype == np.float32


def test_a_missing_array_is_named(tmp_path: Path) -> None:
    arrays = _arrays()
    del arrays["days"]
    with pytest.raises(CropDataError, match=r"lacks required array.*days"):
        read_crop_npz(_save(tmp_path / "x.npz", **arrays))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"days": np.zeros((4, 5), dtype=int)}, r"days must be \(N, T\)"),
        ({"days": np.zeros((4, 6), dtype=np.float32)}, "days must be integers"),
        ({"labels": np.zeros(3, dtype=int)}, r"labels must be \(N,\)"),
        ({"valid": np.ones((4, 7), dtype=bool)}, r"valid must be \(N, T\)"),
        ({"valid": np.ones((4, 6), dtype=np.uint8)}, "valid must be bool"),
        ({"series": np.zeros((4, 6), dtype=np.float32)}, r"series must be \(N, T, C\)"),
    ],
)
def test_shape_and_dtype_mismatches_are_explained(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    with pytest.raises(CropDataError, match=message):
        read_crop_npz(_save(tmp_path / "x.npz", **{**_arrays(), **change}))


def test_labels_outside_the_class_list_are_refused(tmp_path: Path) -> None:
    arrays = {**_arrays(), "class_names": np.array(["a", "b"])}
    with pytest.raises(CropDataError, match=r"labels must lie in \[0, 1\].*found 0..2"):
        read_crop_npz(_save(tmp_path / "x.npz", **arrays))
    negative = {**_arrays(), "labels": np.array([0, -1, 0, 0])}
    with pytest.raises(CropDataError, match="labels must lie"):
        read_crop_npz(_save(tmp_path / "y.npz", **negative))


def test_band_names_must_match_the_model(tmp_path: Path) -> None:
    swapped = list(BANDS)
    swapped[0], swapped[1] = swapped[1], swapped[0]
    arrays = {**_arrays(), "band_names": np.array(swapped)}
    with pytest.raises(CropDataError, match="do not match the model's bands"):
        read_crop_npz(_save(tmp_path / "x.npz", **arrays), bands=BANDS)
    few = _arrays(c=4)
    with pytest.raises(CropDataError, match="series has 4 bands; the model expects 10"):
        read_crop_npz(_save(tmp_path / "y.npz", **few), bands=BANDS)


def test_nan_on_valid_dates_is_refused(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["series"][1, 2, 3] = np.nan
    with pytest.raises(CropDataError, match="NaN"):
        read_crop_npz(_save(tmp_path / "x.npz", **arrays))


def test_a_file_that_is_not_npz_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.npz"
    path.write_text("not an archive")
    with pytest.raises(CropDataError, match=r"not a readable \.npz"):
        read_crop_npz(path)
