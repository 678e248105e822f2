"""Running a footprints model on its own ground resolution, offline, as the server does.

A model trained at ``gsd_m`` metres per pixel sees imagery of another resolution
resampled to its grid (area average when shrinking, bilinear when growing) and
answers resampled back, bilinear, to the image's own grid: the same kernels as
the server (:mod:`service.raster.kernels`), so offline scores are what users get.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from service.raster.kernels import axis_kernel, resample_masked

# Resolutions within this factor of the model's run as they are (the server's default).
TOLERANCE = 1.25

Predict = Callable[[np.ndarray], tuple[np.ndarray, list[np.ndarray]]]


def grid_factor(image_gsd_m: float | None, model_gsd_m: float | None) -> float:
    """Model pixels per image pixel along each axis (1.0 when run as is)."""
    if not image_gsd_m or not model_gsd_m:
        return 1.0
    factor = image_gsd_m / model_gsd_m
    return 1.0 if 1 / TOLERANCE <= factor <= TOLERANCE else factor


def resize(values: np.ndarray, height: int, width: int, method: str) -> np.ndarray:
    """``(C, H, W)`` or ``(H, W)`` resampled to ``(height, width)``, float32."""
    flat = values.ndim == 2
    cube = values[None] if flat else values
    rows = axis_kernel(cube.shape[1], height, method)
    cols = axis_kernel(cube.shape[2], width, method)
    out, _ = resample_masked(cube, None, rows, cols)
    return out[0] if flat else out


def predict_on_model_grid(
    predict: Predict, image: np.ndarray, factor: float
) -> tuple[np.ndarray, list[np.ndarray]]:
    """``predict`` on ``image`` resampled by ``factor``, its outputs put back on the image grid.

    ``predict`` takes ``(C, h, w)`` and returns the ``(h, w)`` probability and
    each gate at strides 1, 2, 4...; the results have the image's ``(H, W)``
    and each gate ``(ceil(H / s), ceil(W / s))``.
    """
    if factor == 1.0:
        return predict(image)
    _, h, w = image.shape
    small = resize(image, max(1, round(h * factor)), max(1, round(w * factor)), "average")
    prob, gates = predict(small)
    back = [resize(g, -(-h // 2**k), -(-w // 2**k), "bilinear") for k, g in enumerate(gates)]
    return resize(prob, h, w, "bilinear"), back
