"""Summary statistics of a result layer, as every job answer reports them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from service.raster.georef import Georeference
from service.raster.gsd import ground_resolution
from service.runtime.segmentation import coarse_valid


def statistics(array: np.ndarray) -> dict[str, float | None]:
    """Min, max, mean and valid fraction of an array, ignoring NaN."""
    arr = np.asarray(array, dtype=np.float32)
    if arr.size == 0:
        return {"min": None, "max": None, "mean": None, "valid_fraction": 0.0}
    low, high = arr.min(), arr.max()
    if np.isfinite(low) and np.isfinite(high):
        # min and max propagate NaN, so all values are finite: three passes, not five.
        return {
            "min": float(low),
            "max": float(high),
            "mean": float(arr.mean()),
            "valid_fraction": 1.0,
        }
    finite = np.isfinite(arr)
    count = int(finite.sum())
    if count == 0:
        return {"min": None, "max": None, "mean": None, "valid_fraction": 0.0}
    values = arr[finite] if count != arr.size else arr
    return {
        "min": float(values.min()),
        "max": float(values.max()),
        "mean": float(values.mean()),
        "valid_fraction": count / arr.size,
    }


def coarse_statistics(
    array: np.ndarray, stride: int, height: int, width: int, valid: np.ndarray | None
) -> dict[str, float | None]:
    """Statistics of a coarse map's own values over the cells that cover the image.

    Cells with no valid pixel under them do not count.
    """
    cells = array[: -(-height // stride), : -(-width // stride)]
    if valid is not None:
        cells = np.where(coarse_valid(valid, stride), cells, np.float32(np.nan))
    return statistics(cells)


def pixel_area_m2(georef: Mapping[str, Any] | None) -> float | None:
    """Ground area of one pixel in m², at the raster's centre (None: not georeferenced)."""
    if not georef or not georef.get("crs"):
        return None
    metres = ground_resolution(Georeference.from_json(dict(georef)))
    return None if metres is None else metres[0] * metres[1]


def class_counts(classes: np.ndarray, count: int) -> np.ndarray:
    """``(count,)`` int64 pixels of each class index in a class map (other values ignored)."""
    values = classes[classes < count]
    return np.bincount(values.ravel(), minlength=count)[:count].astype(np.int64)


def class_statistics(
    counts: np.ndarray, names: Sequence[str], pixel_area: float | None
) -> list[dict[str, Any]]:
    """Per class: its pixels, share of the classified pixels and area in m² (if known)."""
    total = int(counts.sum())
    out: list[dict[str, Any]] = []
    for index, (name, pixels) in enumerate(zip(names, counts.tolist(), strict=True)):
        entry: dict[str, Any] = {
            "class": name,
            "value": index,
            "pixels": int(pixels),
            "fraction": pixels / total if total else 0.0,
        }
        if pixel_area is not None:
            entry["area_m2"] = pixels * pixel_area
        out.append(entry)
    return out
