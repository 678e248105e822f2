"""Tiles drawn in worker processes, which may warp where the server process may not."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.config import Settings
from service.jobs.store import open_store
from service.pipeline.tile_workers import MAX_TILE_WORKERS, TileWorkers, worker_skip_list
from service.pipeline.tiles import TileAddress
from service.raster.gdal_env import SKIPPED_DRIVERS
from tests.helpers.server import REPO
from tests.helpers.tiles import rgba, tile_at
from tests.service.pipeline.test_tiles import _crops_job


def test_workers_skip_the_servers_drivers_but_vrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GDAL_SKIP", SKIPPED_DRIVERS)
    kept = worker_skip_list().split()
    assert "VRT" not in kept
    assert set(kept) == set(SKIPPED_DRIVERS.split()) - {"VRT"}


def test_a_server_without_vrt_gets_tiles_from_its_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server's own setting, inherited by the workers' fresh interpreters.
    monkeypatch.setenv("GDAL_SKIP", SKIPPED_DRIVERS)
    store = open_store(Settings(job_dir=tmp_path / "jobs"))
    record = _crops_job(store)
    settled: list[str] = []
    workers = TileWorkers(store.address, 1, settle=settled.append)

    async def draw() -> tuple[dict, bytes]:
        body = await workers.tilejson(record, "probs:wheat", "http://h", "png")
        west, south, east, north = body["bounds"]
        z, x, y = tile_at((west + east) / 2, (south + north) / 2, body["maxzoom"])
        return body, await workers.tile(record, TileAddress("probs:wheat", z, x, y, "png"))

    try:
        body, png = asyncio.run(draw())
    finally:
        workers.close()
    assert body["name"] == "probs:wheat"
    assert settled == [record.id, record.id]  # written before a worker reads it
    alpha = rgba(png)[3]
    # The 32 m job covers part of the tile; the rest is transparent.
    assert 0 < (alpha == 255).mean() < 0.5
    assert set(alpha.ravel().tolist()) == {0, 255}


def test_workers_end_when_their_server_dies(tmp_path: Path) -> None:
    # A server killed outright (no pool shutdown): its workers must not stay behind.
    script = f"""
import asyncio, os
from service.pipeline.tile_workers import TileWorkers
from service.jobs.store import open_store
from service.config import Settings
from tests.service.pipeline.test_tiles import _crops_job

store = open_store(Settings(job_dir={str(tmp_path / "jobs")!r}))
record = _crops_job(store)
workers = TileWorkers(store.address, 2)
asyncio.run(workers.tilejson(record, "class", "http://h", "png"))
print(" ".join(str(p) for p in workers._executor()._processes), flush=True)
os._exit(0)
"""
    ran = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO
    )
    assert ran.returncode == 0, ran.stderr
    pids = [int(p) for p in ran.stdout.split()]
    assert pids
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{p}").exists() for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if Path(f"/proc/{p}").exists()]


def test_workers_for_a_store_wait_for_jobs_written_behind(tmp_path: Path) -> None:
    plain = open_store(Settings(job_dir=tmp_path / "a"))
    behind = open_store(Settings(job_dir=tmp_path / "b", job_write_behind=True))
    assert TileWorkers.for_store(plain).settle is None
    workers = TileWorkers.for_store(behind)
    assert workers.settle == behind.settle
    assert workers.address == behind.address
    assert 1 <= workers.processes <= MAX_TILE_WORKERS
