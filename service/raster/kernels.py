"""Separable resampling kernels applied with numpy, nodata kept out of every weighted sum."""

# Not GDAL warping: a scene's tiles must be resampled exactly as the whole image
# would be (the same weights, in the image's own pixel coordinates, whichever
# window is read), outputs go back block of rows by block of rows, and nodata
# must stay out of every weighted sum.

from __future__ import annotations

import math

import numpy as np


def axis_kernel(n_in: int, n_out: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Source indices and weights that resample one axis of ``n_in`` pixels to ``n_out``.

    Pixel ``j`` of the output covers ``[j, j + 1) * n_in / n_out`` of the input.
    ``bilinear`` samples the input at the output pixel's centre (half-pixel
    centres, clamped at the edges, as ``Resize``); ``average`` weighs every input
    pixel by how much of the output pixel it covers (bilinear where the axis
    grows).

    Returns:
        ``(n_out, K)`` intp indices and ``(n_out, K)`` float32 weights summing to 1.
    """
    scale = n_in / n_out
    if method == "bilinear" or scale <= 1:
        pos = np.clip((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5, 0, n_in - 1)
        low = np.floor(pos).astype(np.intp)
        high = np.minimum(low + 1, n_in - 1)
        frac = pos - low
        return np.stack([low, high], axis=1), np.stack([1 - frac, frac], axis=1).astype(np.float32)
    start = np.arange(n_out, dtype=np.float64) * scale
    stop = start + scale
    k = math.ceil(scale) + 1
    idx = np.floor(start).astype(np.intp)[:, None] + np.arange(k)[None]
    cover = np.minimum(idx + 1, stop[:, None]) - np.maximum(idx, start[:, None])
    weights = (np.clip(cover, 0, None) / scale).astype(np.float32)
    return np.minimum(idx, n_in - 1), weights


def _apply(array: np.ndarray, idx: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """Resample ``array`` along ``axis`` with an :func:`axis_kernel`; float32 out."""
    shape = [1] * array.ndim
    shape[axis] = idx.shape[0]
    out: np.ndarray | None = None
    for k in range(idx.shape[1]):
        w = weights[:, k].reshape(shape)
        # take() returns a new array: scale it in place rather than allocate again.
        term = np.take(array, idx[:, k], axis=axis).astype(np.float32, copy=False)
        np.multiply(term, w, out=term)
        if out is None:
            out = term
        else:
            out += term
    assert out is not None
    return out


Kernel = tuple[np.ndarray, np.ndarray]


def resample_masked(
    values: np.ndarray, valid: np.ndarray | None, rows: Kernel, cols: Kernel
) -> tuple[np.ndarray, np.ndarray | None]:
    """Resample ``(C, H, W)`` values with only valid pixels in each weighted sum.

    Args:
        values: ``(C, H, W)`` any numeric dtype.
        valid: ``(H, W)`` bool, or None where every pixel is valid.
        rows: :func:`axis_kernel` of the rows; cols: of the columns.

    Returns:
        ``(C, h, w)`` float32 (NaN where no valid pixel contributed) and the
        ``(h, w)`` float32 fraction of each output's weight that was valid
        (None when ``valid`` is None).
    """
    if valid is None:
        return _apply(_apply(values, *rows, axis=1), *cols, axis=2), None
    masked = np.where(valid[None], values, 0).astype(np.float32, copy=False)
    total = _apply(_apply(masked, *rows, axis=1), *cols, axis=2)
    weight = _apply(_apply(valid.astype(np.float32), *rows, axis=0), *cols, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.where(weight > 1e-6, total / np.where(weight > 1e-6, weight, 1), np.nan)
    return out.astype(np.float32, copy=False), weight


def finite_mask(values: np.ndarray) -> np.ndarray | None:
    """``(H, W)`` bool where every band of ``(C, H, W)`` floats is finite; None if all are."""
    if values.dtype.kind != "f":
        return None
    finite = np.isfinite(values).all(axis=0)
    return None if finite.all() else finite
