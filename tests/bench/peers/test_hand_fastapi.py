"""The hand-written FastAPI peer answers what attnserve's session computes for the tile."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import numpy as np
import rasterio

from bench import raw
from bench.peers import common
from bench.run import footprints_tile
from service.app import session_options
from service.config import SHIPPED_MODELS, Settings
from service.runtime.session import ModelSession
from tests.helpers.bodies import upload
from tests.helpers.server import LiveServer


def test_peer_answers_the_probability_of_the_upload(tmp_path: Path) -> None:
    tile_path = tmp_path / "tile.tif"
    tile = footprints_tile(tile_path)
    command = [sys.executable, "-m", "bench.peers.hand_fastapi", "--port"]
    with LiveServer({}, tmp_path / "peer.log", command=lambda port: [*command, str(port)]) as s:
        r = httpx.post(f"{s.url}/predict", **upload(tile), timeout=60)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == common.MEDIA_TYPE
    assert r.headers["x-shape"] == "512,512"
    answer = np.frombuffer(r.content, dtype="<f4").reshape(512, 512)

    session = ModelSession(SHIPPED_MODELS / "footprints-2.2.0.onnx", session_options(Settings()))
    with rasterio.open(tile_path) as ds:
        image = ds.read().astype(np.float32)
    expected = session.run(raw.image_feed(session.manifest, image[None]))["probability"][0, 0]
    np.testing.assert_allclose(answer, expected, atol=1e-5)
    assert answer.min() >= 0.0
    assert answer.max() <= 1.0
