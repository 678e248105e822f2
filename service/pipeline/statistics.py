"""Summary statistics of a result layer, as every job answer reports them."""

from __future__ import annotations

import numpy as np

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
