"""Viewer previews: their size, and grey PNGs with nodata transparent.

Layer and input previews of stored jobs, on their scales, are served and checked in
``test_routes.py``.
"""

from __future__ import annotations

import warnings

import numpy as np
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile

from service.viewer.render import MAX_SIDE, grey_png, preview_shape


def test_previews_keep_the_longer_side_within_the_limit() -> None:
    assert preview_shape(512, 300) == (512, 300)
    assert preview_shape(4096, 1000) == (1024, 250)
    assert max(preview_shape(MAX_SIDE + 1, 10)) <= MAX_SIDE
    assert preview_shape(3000, 3000, max_side=1000) == (1000, 1000)


def test_grey_previews_scale_to_bytes_and_hide_nodata() -> None:
    values = np.array([[0.0, 0.5], [1.0, np.nan]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile(grey_png(values, 0.0, 1.0)) as mem, mem.open(driver="PNG") as png:
            grey, alpha = png.read()
    np.testing.assert_array_equal(grey, [[0, 128], [255, 0]])
    np.testing.assert_array_equal(alpha, [[255, 255], [255, 0]])
