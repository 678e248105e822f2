"""Read and write crop time series data sets stored as ``.npz``.

The file holds ``series (N, T, C)`` values of any band set (e.g. reflectance
x 10000), ``days (N, T)`` integer days of year, ``labels (N,)`` class indices,
and optionally ``valid (N, T)`` bool, ``class_names (K,)``, ``band_names (C,)``
and ``lonlat (N, 2)`` (longitude, latitude: lets training hold out by location).

Series of different lengths are padded to a common ``T``: either ``valid`` is
False on the padding, or (without ``valid``) the padded dates hold NaN in every
band. Invalid dates may hold NaN (nodata); valid ones must be finite, and every
sample needs at least one valid date. Anything wrong is reported by name, so a
user converting their own data knows what to fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from models.data.crops import CropSeries

REQUIRED_KEYS = ("series", "days", "labels")


class CropDataError(ValueError):
    """A crops ``.npz`` file is missing something or is inconsistent."""


def write_crop_npz(path: Path, data: CropSeries) -> None:
    """Write ``data`` (without its ``cloudy`` mask) in the format ``read_crop_npz`` reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {
        "series": np.asarray(data.series, dtype=np.float32),
        "days": np.rint(data.days).astype(np.int32),
        "labels": np.asarray(data.labels, dtype=np.int64),
        "valid": np.asarray(data.valid, dtype=bool),
        "class_names": np.array(data.class_names, dtype=str),
        "band_names": np.array(data.bands, dtype=str),
    }
    if data.lonlat is not None:
        arrays["lonlat"] = np.asarray(data.lonlat, dtype=np.float64)
    with path.open("wb") as fh:
        np.savez_compressed(fh, allow_pickle=False, **arrays)


def read_crop_npz(path: Path, *, bands: Sequence[str] | None = None) -> CropSeries:
    """Read a crops data set, checking it against the model's ``bands``.

    Args:
        path: the ``.npz`` file.
        bands: band names the model expects, in order; when given, the file
            must have ``C == len(bands)`` and, if it names its bands, the same
            names in the same order.

    Returns:
        The data set; ``cloudy`` is None (unknown for real data), class names
        are ``class_0 ...`` when the file has none.

    Raises:
        CropDataError: a key is missing, shapes or dtypes disagree, labels are
            out of range or band names do not match.
    """
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CropDataError(f"{path} is not a readable .npz file: {exc}") from exc
    with archive:
        missing = [k for k in REQUIRED_KEYS if k not in archive.files]
        if missing:
            raise CropDataError(
                f"{path.name} lacks required array(s) {', '.join(missing)}; "
                f"it has {', '.join(archive.files) or 'none'}"
            )
        series = archive["series"]
        days = archive["days"]
        labels = archive["labels"]
        valid = archive["valid"] if "valid" in archive.files else None
        class_names = archive["class_names"] if "class_names" in archive.files else None
        band_names = archive["band_names"] if "band_names" in archive.files else None
        lonlat = archive["lonlat"] if "lonlat" in archive.files else None

    if series.ndim != 3:
        raise CropDataError(f"series must be (N, T, C); got shape {series.shape}")
    N, T, C = series.shape
    if N == 0 or T == 0:
        raise CropDataError(f"series is empty: shape {series.shape}")
    if days.shape != (N, T):
        raise CropDataError(f"days must be (N, T) = {(N, T)} like series; got {days.shape}")
    if not np.issubdtype(days.dtype, np.integer):
        raise CropDataError(f"days must be integers (day of year); got {days.dtype}")
    if labels.shape != (N,):
        raise CropDataError(f"labels must be (N,) = ({N},) like series; got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise CropDataError(f"labels must be integer class indices; got {labels.dtype}")
    if not np.issubdtype(series.dtype, np.number) or series.dtype.kind == "c":
        raise CropDataError(f"series must hold real numbers; got {series.dtype}")
    if valid is None:
        valid = _valid_from_nan(series)
    elif valid.shape != (N, T):
        raise CropDataError(f"valid must be (N, T) = {(N, T)} like series; got {valid.shape}")
    elif valid.dtype != np.bool_:
        raise CropDataError(f"valid must be bool; got {valid.dtype}")
    if not np.isfinite(series[valid]).all():
        raise CropDataError("series has NaN or infinite values on valid dates")
    empty = np.flatnonzero(~valid.any(axis=1))
    if empty.size:
        shown = ", ".join(str(i) for i in empty[:5]) + (" ..." if empty.size > 5 else "")
        raise CropDataError(f"{empty.size} sample(s) have no valid date (index {shown})")
    if lonlat is not None:
        if lonlat.shape != (N, 2):
            raise CropDataError(f"lonlat must be (N, 2) = ({N}, 2); got {lonlat.shape}")
        if not np.issubdtype(lonlat.dtype, np.number) or not np.isfinite(lonlat).all():
            raise CropDataError("lonlat must hold finite longitude, latitude numbers")

    if class_names is None:
        names = tuple(f"class_{k}" for k in range(int(labels.max()) + 1))
    else:
        names = tuple(str(c) for c in class_names.reshape(-1))
    if labels.min() < 0 or labels.max() >= len(names):
        raise CropDataError(
            f"labels must lie in [0, {len(names) - 1}] for {len(names)} classes; "
            f"found {labels.min()}..{labels.max()}"
        )

    file_bands = None if band_names is None else tuple(str(b) for b in band_names.reshape(-1))
    if file_bands is not None and len(file_bands) != C:
        raise CropDataError(f"band_names lists {len(file_bands)} bands but series has {C}")
    if bands is not None:
        expected = tuple(bands)
        if len(expected) != C:
            raise CropDataError(
                f"series has {C} bands; the model expects {len(expected)}: {', '.join(expected)}"
            )
        if file_bands is not None and file_bands != expected:
            raise CropDataError(
                f"band_names {', '.join(file_bands)} do not match the model's bands "
                f"{', '.join(expected)} (same names, same order)"
            )
    return CropSeries(
        series=series.astype(np.float32),
        days=days.astype(np.float32),
        valid=valid,
        labels=labels.astype(np.int64),
        class_names=names,
        bands=file_bands
        or (tuple(bands) if bands is not None else tuple(f"band_{i}" for i in range(C))),
        cloudy=None,
        lonlat=None if lonlat is None else lonlat.astype(np.float64),
    )


def _valid_from_nan(series: np.ndarray) -> np.ndarray:
    """``(N, T)`` validity of a file without ``valid``: dates all NaN are padding."""
    missing = np.isnan(series)
    padding = missing.all(axis=2)
    partial = missing.any(axis=2) & ~padding
    if partial.any():
        n, t = np.argwhere(partial)[0]
        raise CropDataError(
            f"series has NaN in some bands but not all at sample {n}, date {t}; without a "
            "valid array, a date must be NaN in every band to count as padding"
        )
    return np.asarray(~padding)
