"""Viewer previews: their size, their value scale, and grey PNGs with nodata transparent.

Layer and input previews of stored jobs are served and checked in ``test_routes.py``.
"""

from __future__ import annotations

import warnings

import numpy as np
from rasterio.errors import NotGeoreferencedWarning
from rasterio.io import MemoryFile

from service.viewer.render import MAX_SIDE, grey_png, preview_shape, scale_of


def test_previews_keep_the_longer_side_within_the_limit() -> None:
    assert preview_shape(512, 300) == (512, 300)
    assert preview_shape(4096, 1000) == (1024, 250)
    assert max(preview_shape(MAX_SIDE + 1, 10)) <= MAX_SIDE
    assert preview_shape(3000, 3000, max_side=1000) == (1000, 1000)


def test_probabilities_keep_a_fixed_scale_and_other_layers_stretch() -> None:
    values = np.array([0.2, 0.4, np.nan], np.float32)
    assert scale_of({"kind": "probability"}, values) == (0.0, 1.0)
    assert scale_of({"kind": "spatial"}, values) == (np.float32(0.2), np.float32(0.4))
    assert scale_of({"kind": "class", "classes": ["a", "b", "c"]}, values) == (0.0, 2.0)
    # A flat or empty layer still has a range to divide by.
    assert scale_of({"kind": "spatial"}, np.full(3, 5.0)) == (5.0, 6.0)
    assert scale_of({"kind": "spatial"}, np.full(3, np.nan)) == (0.0, 1.0)


def test_grey_previews_scale_to_bytes_and_hide_nodata() -> None:
    values = np.array([[0.0, 0.5], [1.0, np.nan]], np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with MemoryFile(grey_png(values, 0.0, 1.0)) as mem, mem.open(driver="PNG") as png:
            grey, alpha = png.read()
    np.testing.assert_array_equal(grey, [[0, 128], [255, 0]])
    np.testing.assert_array_equal(alpha, [[255, 255], [255, 0]])
