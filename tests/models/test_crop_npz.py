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


def test_any_band_set_is_read_with_its_own_names_and_places(tmp_path: Path) -> None:
    arrays = {
        **_arrays(c=1),
        "band_names": np.array(["NDVI"]),
        "lonlat": np.array([[-55.0, -12.0], [-55.1, -12.2], [-56.0, -13.0], [-56.0, -13.1]]),
    }
    back = read_crop_npz(_save(tmp_path / "ndvi.npz", **arrays))
    assert back.bands == ("NDVI",)
    assert back.series.shape == (4, 6, 1)
    assert back.lonlat is not None
    np.testing.assert_array_equal(back.lonlat, arrays["lonlat"])
    write_crop_npz(tmp_path / "again.npz", back)
    again = read_crop_npz(tmp_path / "again.npz")
    assert again.lonlat is not None
    assert again.bands == ("NDVI",)


def test_dates_nan_in_every_band_are_padding_when_there_is_no_valid_array(
    tmp_path: Path,
) -> None:
    arrays = _arrays(c=2)
    arrays["series"][0, 4:] = np.nan  # a series 4 dates long
    arrays["series"][2, 1] = np.nan  # a gap in the middle
    back = read_crop_npz(_save(tmp_path / "x.npz", **arrays))
    assert back.valid[0].tolist() == [True] * 4 + [False] * 2
    assert back.valid[2].tolist() == [True, False, True, True, True, True]
    assert back.valid[1].all()
    assert back.valid[3].all()


def test_a_sample_without_any_valid_date_is_named(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["series"][2] = np.nan
    with pytest.raises(CropDataError, match=r"1 sample\(s\) have no valid date \(index 2\)"):
        read_crop_npz(_save(tmp_path / "x.npz", **arrays))
    valid = np.ones((4, 6), dtype=bool)
    valid[1] = False
    with pytest.raises(CropDataError, match=r"index 1\)"):
        read_crop_npz(_save(tmp_path / "y.npz", **{**_arrays(), "valid": valid}))


def test_nan_in_some_bands_of_a_date_is_refused_without_a_valid_array(tmp_path: Path) -> None:
    arrays = _arrays()
    arrays["series"][1, 2, 3] = np.nan
    with pytest.raises(CropDataError, match=r"some bands but not all at sample 1, date 2"):
        read_crop_npz(_save(tmp_path / "x.npz", **arrays))


def test_bad_lonlat_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CropDataError, match=r"lonlat must be \(N, 2\)"):
        read_crop_npz(_save(tmp_path / "x.npz", **_arrays(), lonlat=np.zeros((4, 3))))
    with pytest.raises(CropDataError, match="finite"):
        read_crop_npz(_save(tmp_path / "y.npz", **_arrays(), lonlat=np.full((4, 2), np.nan)))
