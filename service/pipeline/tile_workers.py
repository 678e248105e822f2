"""Tiles are drawn in worker processes, where GDAL may warp.

rio-tiler reprojects through GDAL's warped VRT, which needs GDAL's VRT driver.
The server process never registers that driver (a user's upload must never be
read as a VRT that points at other files: see ``service.raster.gdal_env``), so
tiles are drawn in a small pool of processes that register it and open nothing
but jobs' own rasters, with the GTiff driver. A tile costs the pool about a
millisecond of hand-over.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from service.jobs.record import JobRecord
from service.runtime.cpus import usable_cpus

if TYPE_CHECKING:
    from service.jobs.store import JobStore
    from service.pipeline.tiles import JobTiles, TileAddress

# The process's job tiles, set by ``_start`` in each worker.
_worker: JobTiles | None = None


# How often a worker checks that the server that started it is still there.
PARENT_CHECK_S = 1.0


def _exit_with(parent: int) -> None:
    """End this worker once ``parent`` is gone (a killed server must not leave workers behind)."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_S)
    os._exit(0)


def _start(address: str, skipped: str) -> None:
    """A worker's start: GDAL may register VRT (before anything registers drivers)."""
    os.environ["GDAL_SKIP"] = skipped
    # A server that exits without shutting its pool down (killed, or stopped
    # before its pool's threads run) leaves its workers waiting on a queue no one
    # writes to: they watch for it instead.
    threading.Thread(target=_exit_with, args=(os.getppid(),), daemon=True).start()
    from service.jobs.store import open_reader
    from service.pipeline.tiles import JobTiles

    global _worker
    _worker = JobTiles(open_reader(address))


def _call(method: str, *args: Any) -> Any:
    if _worker is None:
        raise RuntimeError("tile worker not started")
    return getattr(_worker, method)(*args)


def worker_skip_list() -> str:
    """GDAL_SKIP for workers: the server's list, less the VRT driver their warps need."""
    from service.raster.gdal_env import SKIPPED_DRIVERS

    skipped = os.environ.get("GDAL_SKIP", SKIPPED_DRIVERS)
    return " ".join(d for d in skipped.split() if d.upper() != "VRT")


# Tile worker processes at most (each holds about 150 MB once it has drawn a tile).
MAX_TILE_WORKERS = 4


class TileWorkers:
    """A pool of processes drawing tiles of one job store's jobs (started on first use).

    Args:
        address: the job store's address (:func:`service.jobs.store.open_reader`).
        processes: pool size.
        settle: waits until a job written behind is stored (the workers read the
            store, not this process's memory); None where nothing is written behind.
    """

    def __init__(
        self, address: str, processes: int, settle: Callable[[str], None] | None = None
    ) -> None:
        self.address = address
        self.processes = max(1, processes)
        self.settle = settle
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    @classmethod
    def for_store(cls, store: JobStore) -> TileWorkers:
        """Workers over ``store``: one per usable CPU, at most :data:`MAX_TILE_WORKERS`."""
        settle = store.settle if store.write_behind else None
        return cls(store.address, min(MAX_TILE_WORKERS, usable_cpus()), settle)

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = concurrent.futures.ProcessPoolExecutor(
                    self.processes,
                    # A fresh interpreter: nothing has registered GDAL's drivers yet.
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_start,
                    initargs=(self.address, worker_skip_list()),
                )
            return self._pool

    async def _run(self, method: str, record: JobRecord, *args: Any) -> Any:
        if self.settle is not None:
            await asyncio.to_thread(self.settle, record.id)
        loop = asyncio.get_running_loop()
        pool = self._executor()
        try:
            return await loop.run_in_executor(pool, _call, method, record, *args)
        except concurrent.futures.process.BrokenProcessPool:
            # A worker died (killed for memory, say): the next request gets a new pool.
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise

    async def tile(self, record: JobRecord, at: TileAddress) -> bytes:
        """A tile of a job's map layer, as PNG or WEBP."""
        data: bytes = await self._run("tile", record, at)
        return data

    async def preview(
        self, record: JobRecord, name: str, fmt: str, bands: tuple[str, ...] = ()
    ) -> bytes:
        """The whole of a job's map layer as one image, in the job's own CRS."""
        data: bytes = await self._run("preview", record, name, fmt, bands)
        return data

    async def tilejson(
        self, record: JobRecord, name: str, base_url: str, fmt: str
    ) -> dict[str, Any]:
        """TileJSON of a job's map layer."""
        body: dict[str, Any] = await self._run("tilejson", record, name, base_url, fmt)
        return body

    async def wmts(self, record: JobRecord, base_url: str) -> str:
        """WMTS capabilities of a job's map layers."""
        xml: str = await self._run("wmts", record, base_url)
        return xml

    def close(self) -> None:
        """Stop the workers."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
