"""Response helpers: numpy-aware JSON, GeoTIFF downloads and the format choice."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.api.responses import GEOTIFF, JSONBody, geotiff_response, result_json, wants_geotiff
from service.errors import InvalidInput


def test_json_bodies_take_numpy_arrays_and_write_nan_as_null() -> None:
    body = JSONBody({"weights": np.array([0.25, np.nan], dtype=np.float32), "n": 2})
    assert body.media_type == "application/json"
    assert json.loads(body.body) == {"weights": [0.25, None], "n": 2}


def test_results_are_never_cached() -> None:
    answer = result_json({"job_id": "j"}, status_code=202)
    assert answer.status_code == 202
    assert answer.headers["cache-control"] == "no-store"


def test_a_geotiff_is_a_named_download() -> None:
    answer = geotiff_response(b"II*\x00", "prediction.tif")
    assert answer.body == b"II*\x00"
    assert answer.headers["content-type"] == GEOTIFF
    assert answer.headers["content-disposition"] == 'attachment; filename="prediction.tif"'
    assert answer.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("format_", "accept", "wanted"),
    [
        ("geotiff", None, True),
        ("TIF", "application/json", True),
        ("json", "image/tiff", False),
        (None, "image/tiff, application/json", True),
        (None, "application/json, image/tiff", False),
        (None, None, False),
    ],
)
def test_format_beats_accept_and_accept_counts_its_first_choice(
    format_: str | None, accept: str | None, wanted: bool
) -> None:
    assert wants_geotiff(format_, accept) is wanted


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(InvalidInput, match="format must be json or geotiff, not 'xml'"):
        wants_geotiff("xml", None)
