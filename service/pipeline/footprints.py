"""A job's footprints: made in a worker process with bounds, kept per job and parameters.

GDAL's polygonize holds Python's GIL for its whole run: on a noisy 2048 x 2048
probability map it ran 14 s in which no other thread of the process did
anything, so no worker thread could keep it off the event loop. Each
extraction runs in a process of its own (forked from a server that has the
modules loaded, so it starts in milliseconds), which is killed at the deadline.
Answers are kept in a bounded cache; concurrent requests for the same job and
parameters share one extraction.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import json
import logging
import multiprocessing
import time
from collections.abc import Callable, Coroutine
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from multiprocessing.context import BaseContext
from typing import Any

import rasterio.crs

from service.errors import (
    AttnserveError,
    InferenceFailed,
    InvalidInput,
    InvalidRaster,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    UnsupportedRaster,
)
from service.jobs.record import JobRecord
from service.jobs.store import JobStore, open_reader
from service.pipeline import views
from service.pipeline.layers import LayerReader
from service.pipeline.threads import thread_future
from service.raster.footprints import TOO_SLOW, FootprintOptions, extract_footprints
from service.raster.gdal_env import reserve_block_cache
from service.raster.vectors import VECTOR_FORMATS, VectorFormat, encode, vector_format

# Routes build their options and formats from here, not from the raster package.
__all__ = [
    "VECTOR_FORMATS",
    "FootprintLimits",
    "FootprintOptions",
    "FootprintService",
    "VectorFormat",
    "footprints_of",
    "vector_format",
]

log = logging.getLogger(__name__)

# Errors a worker reports by code; anything else is the server's failure.
_ERRORS: dict[str, type[AttnserveError]] = {
    cls.code: cls
    for cls in (InvalidInput, InvalidRaster, UnsupportedRaster, NotFound, PayloadTooLarge)
}
# Time a worker gets past the deadline to report its own (clearer) error.
_GRACE_S = 1.0
# Pixels of the prediction a worker labels at once (512 rows of a 4096-wide scene).
BLOCK_PIXELS = 2**21
# GDAL's block cache in a footprints worker.
WORKER_CACHE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class FootprintLimits:
    """Bounds of footprints extraction.

    Attributes:
        max_features: most polygons in one answer (422 past it).
        timeout_s: longest one extraction may take (422 past it), and longest
            one may wait for a worker (503 past it).
        workers: extractions running at the same time.
        max_waiting: extractions waiting for a worker; more are refused (503).
        cache_bytes: memory for answers kept per job and parameters.
    """

    max_features: int = 50_000
    timeout_s: float = 120.0
    workers: int = 2
    max_waiting: int = 8
    cache_bytes: int = 64 * 2**20


def footprints_of(
    job: JobRecord,
    store: JobStore,
    options: FootprintOptions,
    max_features: int | None = None,
    deadline: float | None = None,
) -> dict[str, Any]:
    """A segmentation job's polygons as a GeoJSON FeatureCollection.

    Buildings of a probability map; a class map's regions, one class each.
    """
    first = next(la for la in job.layers if la.role == "prediction")
    prediction = first.name
    classes = first.classes if first.kind == "class" else None
    attention = views.spatial_attention_names(job)
    georef = job.georef or {}
    with LayerReader(job, store) as reader:
        height, width = reader.size
        # Blocks of about BLOCK_PIXELS whatever the width: memory does not grow with the scene.
        rows = max(1, min(height, BLOCK_PIXELS // max(1, width)))
        return extract_footprints(
            reader.blocks(prediction, rows),
            height,
            width,
            tuple(georef["transform"]),
            _wkt(georef.get("crs")),
            reader.read,
            prediction,
            attention,
            options,
            max_features=max_features,
            deadline=deadline,
            classes=classes,
        )


def _wkt(crs: str | None) -> str | None:
    if not crs:
        return None
    return str(rasterio.crs.CRS.from_user_input(crs).to_wkt())


def _work(
    conn: Connection,
    root: str,
    job: dict[str, Any],
    options: FootprintOptions,
    max_features: int,
    timeout_s: float,
) -> None:
    """A worker process: one extraction, its GeoJSON (or error) sent back on ``conn``."""
    try:
        # GDAL's default block cache is 5% of the machine's memory: in a worker reading
        # windows of a 16384 x 16384 scene's COGs it grew to 1.4 GB. Regions are read
        # block by block: a block row of such a scene's outputs (32 blocks of 4 float
        # attention bands and 32 of probability, 160 MB decoded) serves them.
        reserve_block_cache(WORKER_CACHE_BYTES)
        store = open_reader(root)
        deadline = time.monotonic() + timeout_s
        collection = footprints_of(JobRecord(**job), store, options, max_features, deadline)
        conn.send(("ok", json.dumps(collection, separators=(",", ":")).encode()))
    except AttnserveError as exc:
        conn.send(("error", exc.code, exc.message))
    except Exception:
        log.exception("footprints of job %s failed", str(job.get("id"))[:6])
        conn.send(("error", "internal_error", "the footprints could not be made"))
    finally:
        conn.close()


def _encode_apart(context: BaseContext, geojson: bytes, format_: VectorFormat) -> bytes:
    """``encode`` in a process of ``context``, waited for in this thread."""
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool:
        return pool.submit(encode, geojson, format_).result()


class FootprintService:
    """Footprints of jobs, extracted in worker processes, bounded and cached.

    Args:
        store: the job store.
        limits: features, time, concurrency and cache bounds.
    """

    def __init__(self, store: JobStore, limits: FootprintLimits) -> None:
        self.store = store
        self.limits = limits
        self._context = multiprocessing.get_context("forkserver")
        # The fork server imports these once; each worker is forked from it.
        self._context.set_forkserver_preload([__name__])
        self._slots: asyncio.Semaphore | None = None
        self._queued = 0
        self._cache: collections.OrderedDict[tuple[str, str], bytes] = collections.OrderedDict()
        self._cache_size = 0
        self._flights: dict[tuple[str, str], asyncio.Task[bytes]] = {}
        self.extractions = 0  # worker processes started

    async def geojson(self, job: JobRecord, options: FootprintOptions) -> bytes:
        """The job's footprints at ``options`` as GeoJSON bytes (cached).

        Raises:
            InvalidInput: more than ``max_features`` polygons, or slower than
                ``timeout_s``: the message says which parameters to raise.
            Overloaded: too many extractions running and waiting.
        """
        key = (job.id, options.key())
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        flight = self._flights.get(key)
        if flight is None:
            if self._queued >= self.limits.workers + self.limits.max_waiting:
                raise Overloaded(
                    f"{self._queued} footprints extractions are running or waiting; retry shortly",
                    retry_after_s=5,
                )
            flight = asyncio.create_task(self._extract(job, options), name="footprints")
            self._queued += 1
            self._flights[key] = flight
            flight.add_done_callback(lambda task: self._landed(key, task))
        # Shielded: a client that hangs up does not stop the others' extraction.
        return await asyncio.shield(flight)

    async def download(
        self, job: JobRecord, options: FootprintOptions, format_: VectorFormat
    ) -> bytes:
        """The job's footprints at ``options`` as a file of ``format_`` (cached too).

        Encoded from the GeoJSON answer, so that every format holds its features.

        Raises:
            InvalidInput, Overloaded: as ``geojson``.
        """
        geojson = await self.geojson(job, options)
        if format_.driver is None:
            return geojson
        key = (job.id, f"{options.key()}.{format_.extension}")
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        # Parsing and writing 50,000 polygons holds the GIL for about 0.7 s: a
        # process of its own keeps that off the event loop.
        data = await self._bounded(
            asyncio.to_thread(_encode_apart, self._context, geojson, format_)
        )
        self._keep(key, data)
        return data

    def _landed(self, key: tuple[str, str], task: asyncio.Task[bytes]) -> None:
        self._flights.pop(key, None)
        self._queued -= 1
        if task.cancelled() or task.exception() is not None:
            return
        self._keep(key, task.result())

    def _keep(self, key: tuple[str, str], data: bytes) -> None:
        if len(data) > self.limits.cache_bytes:
            return
        self._cache[key] = data
        self._cache_size += len(data)
        while self._cache_size > self.limits.cache_bytes:
            _, dropped = self._cache.popitem(last=False)
            self._cache_size -= len(dropped)

    def forget(self, job_id: str) -> None:
        """Drop a job's cached answers (it was deleted)."""
        for key in [k for k in self._cache if k[0] == job_id]:
            self._cache_size -= len(self._cache.pop(key))

    async def _extract(self, job: JobRecord, options: FootprintOptions) -> bytes:
        return await self._bounded(self._in_worker(job, options))

    async def _bounded(self, work: Coroutine[Any, Any, bytes]) -> bytes:
        """``work`` once a worker slot is free."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limits.workers)
        # Waiting counts towards the deadline too: six noisy requests at once must
        # not leave the last one queued for six deadlines.
        try:
            await asyncio.wait_for(self._slots.acquire(), self.limits.timeout_s)
        except BaseException as exc:
            work.close()  # never started
            if isinstance(exc, TimeoutError):
                raise Overloaded(
                    "footprints extractions are busy with other requests; retry shortly",
                    retry_after_s=5,
                ) from None
            raise
        try:
            return await work
        finally:
            self._slots.release()

    async def _in_worker(self, job: JobRecord, options: FootprintOptions) -> bytes:
        await asyncio.to_thread(self.store.settle, job.id)
        receiver, sender = self._context.Pipe(duplex=False)
        limits = self.limits
        process = self._context.Process(
            target=_work,
            args=(
                sender,
                self.store.address,
                asdict(job),
                options,
                limits.max_features,
                limits.timeout_s,
            ),
            name=f"footprints-{job.id[:6]}",
            daemon=True,
        )
        self.extractions += 1
        # A cancel (the server shutting down) cannot stop a thread: each call
        # below runs to its end, and the pipe closes only once none of them is
        # still inside it.
        threads: list[asyncio.Future[Any]] = []

        def in_thread(call: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
            threads.append(thread_future(call, *args))
            return asyncio.shield(threads[-1])

        try:
            await in_thread(process.start)
            sender.close()
            if not await in_thread(receiver.poll, limits.timeout_s + _GRACE_S):
                raise InvalidInput(TOO_SLOW)
            message = await in_thread(receiver.recv)
        except EOFError:
            log.error(
                "footprints worker of job %s died (exit code %s)", job.id[:6], process.exitcode
            )
            raise InferenceFailed(
                "the footprints could not be made (the server ran out of resources); "
                "retry with a higher threshold or min_area_px"
            ) from None
        finally:
            await asyncio.wait(threads[:1])  # a start under way ends first
            sender.close()
            # Killed at the deadline, on a cancel, or once it answered; never left
            # behind. The kill also ends a poll or read still waiting on it.
            if process.pid is not None:
                if process.is_alive():
                    process.kill()
                await asyncio.to_thread(process.join)
            if threads:
                await asyncio.wait(threads)
            for done in threads:
                if not done.cancelled():
                    done.exception()  # raised above already, or the request is gone
            receiver.close()
        if message[0] == "ok":
            data: bytes = message[1]
            return data
        _, code, text = message
        raise _ERRORS.get(code, InferenceFailed)(text)
