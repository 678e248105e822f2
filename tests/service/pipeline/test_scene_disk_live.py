"""Scene jobs on a live server: temporary disk follows the valid area, is capped, is cleaned."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import rasterio
import rasterio.windows
from affine import Affine

from tests.helpers.scenes import tile_scene
from tests.helpers.server import LiveServer


def _submit(server: LiveServer, path: Path, **fields: str) -> str:
    resp = httpx.post(
        f"{server.url}/predict",
        data={"model": "footprints", "async": "true", **fields},
        files={"image": (path.name, path.read_bytes(), "image/tiff")},
        timeout=60,
    )
    assert resp.status_code == 202, resp.text
    return str(resp.json()["job_id"])


def _finished(server: LiveServer, job_id: str, timeout_s: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body: dict[str, Any] = httpx.get(f"{server.url}/jobs/{job_id}", timeout=10).json()
        if body["state"] in ("done", "failed", "cancelled"):
            return body
        time.sleep(0.1)
    raise TimeoutError(job_id)


def _job_dir(root: Path, job_id: str) -> Path:
    return root / job_id[:2] / job_id


def _disk(path: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in path.iterdir())


def _nodata_scene(path: Path, side: int) -> Path:
    """A scene of nodata but for a 256 x 256 patch in its top left corner."""
    profile = {
        "driver": "GTiff",
        "width": side,
        "height": side,
        "count": 3,
        "dtype": "uint8",
        "nodata": 0,
        "crs": "EPSG:32631",
        "transform": Affine(0.5, 0, 500000, 0, -0.5, 5000000),
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
    }
    with rasterio.open(path, "w", **profile) as dst:
        for _, window in dst.block_windows(1):
            dst.write(np.zeros((3, window.height, window.width), np.uint8), window=window)
        dst.write(
            np.full((3, 256, 256), 120, np.uint8), window=rasterio.windows.Window(0, 0, 256, 256)
        )
    return path


def test_scene_temporaries_follow_the_valid_area_are_capped_and_cleaned(
    start_server: Callable[..., LiveServer], shared_data: Path, tmp_path: Path
) -> None:
    server = start_server(scene_max_temp_mb="12", scene_tiles_in_flight="1")
    jobs = tmp_path / "jobs"
    scene = tile_scene(shared_data / "cogeo.tif", 2, tmp_path / "scene.tif")

    # Cancelled while running: the answer and /healthz are prompt, the partials go.
    job_id = _submit(server, scene, tile_size="256", overlap="0")
    deadline = time.monotonic() + 120
    directory = _job_dir(jobs, job_id)
    # Partials appear with the first finished block of rows.
    while not any(p.name.endswith(".partial.tif") for p in directory.iterdir()):
        assert time.monotonic() < deadline
        assert httpx.get(f"{server.url}/jobs/{job_id}").json()["state"] in ("queued", "running")
        time.sleep(0.05)
    assert httpx.delete(f"{server.url}/jobs/{job_id}", timeout=10).status_code == 200
    assert httpx.get(f"{server.url}/healthz", timeout=5).status_code == 200
    assert _finished(server, job_id)["state"] == "cancelled"
    assert sorted(p.name for p in directory.iterdir()) == ["input_0.tif", "meta.json"]

    # 2048 x 2048, almost nothing valid: 16 MiB per float band if written dense,
    # more than the cap for the prediction alone.
    empty = _nodata_scene(tmp_path / "empty.tif", 2048)
    body = _finished(server, _submit(server, empty))
    assert body["state"] == "done", body
    directory = _job_dir(jobs, body["job_id"])
    outputs = _disk(directory) - (directory / "input_0.tif").stat().st_blocks * 512
    assert outputs < 2 * 2**20, outputs
    with rasterio.open(directory / "prediction.tif") as out:
        assert (out.width, out.height) == (2048, 2048)
        assert out.read(1, masked=True).count() == 256 * 256

    # The same size with data everywhere passes the cap: the job fails, saying
    # why, and its unfinished files are gone.
    body = _finished(server, _submit(server, scene))
    assert body["state"] == "failed", body
    assert body["error"]["code"] == "storage_failed"
    assert "ATTNSERVE_SCENE_MAX_TEMP_MB" in body["error"]["message"]
    left = sorted(p.name for p in _job_dir(jobs, body["job_id"]).iterdir())
    assert left == ["input_0.tif", "meta.json"]
