"""Returning freed heap memory to the operating system (glibc only).

Decoding rasters and running batches of varying shapes churns large numpy
buffers across threads; glibc keeps freed chunks in its arenas, so a long-lived
server's resident memory creeps up although nothing is leaked. Trimming the
heaps now and then gives that memory back, and capping the number of arenas
(glibc makes up to 8 per core, one per thread that allocates concurrently)
keeps freed chunks in fewer places, where later requests reuse them.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import gc
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service.errors import Overloaded, PayloadTooLarge

log = logging.getLogger(__name__)


# glibc's mallopt() parameter for the most arenas (malloc.h).
M_ARENA_MAX = -8


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, looked up once: ``find_library`` runs ``ldconfig -p`` in a subprocess."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def _glibc(function: str) -> Any | None:
    """A glibc function through ctypes, or None where libc has none of that name."""
    libc = _libc()
    try:
        return None if libc is None else getattr(libc, function)
    except AttributeError:  # not glibc (musl, macOS)
        return None


def limit_malloc_arenas(count: int) -> bool:
    """Let glibc create at most ``count`` malloc arenas (as ``MALLOC_ARENA_MAX``).

    Call it before the server starts its threads. Returns whether it took effect.
    """
    mallopt = _glibc("mallopt")
    if mallopt is None or count <= 0:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_ARENA_MAX, count))


def malloc_trim() -> Callable[[], int] | None:
    """glibc's ``malloc_trim(0)`` as a function, or None where libc has none."""
    trim = _glibc("malloc_trim")
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: int(trim(0))


async def trim_heap_periodically(interval_s: float) -> None:
    """Call glibc's ``malloc_trim(0)`` every ``interval_s`` seconds, off the event loop."""
    trim = malloc_trim()
    if trim is None:
        log.info("malloc_trim is not available; heap trimming is off")
        return
    while True:
        await asyncio.sleep(interval_s)
        await asyncio.to_thread(trim)


def tune_gc(threshold: tuple[int, int, int] | None, freeze: bool) -> int:
    """Make Python's cyclic garbage collector pause a loaded server less often and shorter.

    A server's start-up leaves hundreds of thousands of long-lived objects
    (modules, FastAPI and pydantic models, numpy, GDAL bindings) that every full
    collection walks, and each request makes thousands of short-lived ones
    (parsed JSON, records) that trigger collections every 700 allocations by
    default. Under load those pauses set the latency tail.

    Args:
        threshold: collection thresholds per generation (``gc.set_threshold``);
            None keeps Python's.
        freeze: collect once, then exempt every object alive now from later
            collections (``gc.freeze``); objects made afterwards are collected
            as before.

    Returns:
        How many objects are frozen.

    Measured on the crops model (16 clients, 3 interleaved rounds of 8 s on 2
    cores): p99 165-193 ms and 158-201 requests/s with Python's defaults;
    98-132 ms, 186-279/s frozen; 83-119 ms, 254-297/s frozen with thresholds
    (50000, 20, 100).
    """
    if threshold is not None:
        gc.set_threshold(*threshold)
    if freeze:
        gc.collect()
        gc.freeze()
    return gc.get_freeze_count()


class MemoryBudget:
    """Bounds the memory that requests and jobs hold at once, counted before they decode.

    Each request or job reserves its estimated peak (decoded pixels, their float
    copies, model activations, outputs) before reading any pixel; one over
    ``per_request`` is refused (413) and others wait for room within ``total``
    (503 after ``wait_s``). Thread-safe: decoding reserves from worker threads.

    Args:
        total: bytes all reservations may hold together.
        per_request: bytes one reservation may hold.
        wait_s: longest wait for room before 503.
        setting: the setting that sets ``per_request``, named in refusals.
    """

    def __init__(
        self, total: int, per_request: int, wait_s: float = 10.0, setting: str = ""
    ) -> None:
        self.total = total
        self.per_request = min(per_request, total)
        self.wait_s = wait_s
        self.setting = setting
        self.in_use = 0
        self.peak = 0
        self._room = threading.Condition()

    def check(self, nbytes: int, what: str) -> None:
        """Refuse ``what`` if it alone needs more than one request may hold.

        Raises:
            PayloadTooLarge: naming the estimate and the limit.
        """
        if nbytes > self.per_request:
            hint = f" ({self.setting})" if self.setting else ""
            raise PayloadTooLarge(
                f"{what} needs about {_mib(nbytes)} MiB of memory; the limit per request is "
                f"{_mib(self.per_request)} MiB{hint}",
                needed_mib=_mib(nbytes),
                limit_mib=_mib(self.per_request),
            )

    def fits(self, nbytes: int) -> bool:
        """Whether one request of ``nbytes`` is within the per-request limit."""
        return nbytes <= self.per_request

    def reserve(self, nbytes: int, what: str) -> Reservation:
        """Hold ``nbytes`` until the reservation is released; blocks while there is no room.

        Raises:
            PayloadTooLarge: over the per-request limit.
            Overloaded: no room within ``wait_s``.
        """
        self.check(nbytes, what)
        deadline = time.monotonic() + self.wait_s
        with self._room:
            while self.in_use + nbytes > self.total:
                left = deadline - time.monotonic()
                if left <= 0 or not self._room.wait(left):
                    if self.in_use + nbytes <= self.total:
                        break
                    raise Overloaded(
                        f"the server's memory budget is in use by other requests ({what} "
                        f"needs about {_mib(nbytes)} MiB); retry shortly",
                        retry_after_s=2.0,
                    )
            self.in_use += nbytes
            self.peak = max(self.peak, self.in_use)
        return Reservation(self, nbytes)

    def hold(self, nbytes: int, cancelled: Callable[[], bool]) -> Reservation:
        """Hold ``nbytes`` (at most one request's share) for a job, waiting as long as it takes.

        A queued job has no client waiting on it, so it waits for room rather
        than fail; ``cancelled`` ends the wait (returning an empty reservation).
        """
        nbytes = min(nbytes, self.per_request)
        with self._room:
            while self.in_use + nbytes > self.total:
                if cancelled():
                    return Reservation(None, 0)
                self._room.wait(0.5)
            self.in_use += nbytes
            self.peak = max(self.peak, self.in_use)
        return Reservation(self, nbytes)

    def _release(self, nbytes: int) -> None:
        with self._room:
            self.in_use -= nbytes
            self._room.notify_all()


class Reservation:
    """Bytes held in a :class:`MemoryBudget`; release once (later calls do nothing)."""

    # Freed buffers this large or larger are handed back to the OS at release.
    TRIM_ABOVE = 64 * 2**20

    def __init__(self, budget: MemoryBudget | None, nbytes: int) -> None:
        self.budget = budget
        self.nbytes = nbytes

    def release(self) -> None:
        """Give the bytes back; after a large request also trim the heap (glibc)."""
        budget, self.budget = self.budget, None
        if budget is None:
            return
        budget._release(self.nbytes)
        if self.nbytes >= self.TRIM_ABOVE:
            # The request's arrays are gone by now; without a trim glibc keeps
            # their pages (measured: 5.9 GB still held 60 s after two uploads).
            trim = malloc_trim()
            if trim is not None:
                trim()

    async def release_async(self) -> None:
        """:meth:`release` off the event loop (trimming a large heap takes milliseconds)."""
        if self.budget is not None:
            await asyncio.to_thread(self.release)


def unreserved() -> Reservation:
    """A reservation of nothing (for paths that hold no large memory)."""
    return Reservation(None, 0)


def _mib(nbytes: int) -> int:
    return -(-nbytes // 2**20)


def segmentation_bytes(
    pixels: int, bands: int, itemsize: int, activation_per_px: float, outputs_per_px: float
) -> int:
    """Estimated peak bytes of one image through a segmentation model.

    Args:
        pixels: the image's pixels (height x width, after padding).
        bands: its bands; ``itemsize``: bytes per decoded value.
        activation_per_px: the model's working memory per input pixel (measured
            at warm-up, see :meth:`ModelSession.activation_bytes`).
        outputs_per_px: bytes of every output per input pixel.
    """
    decoded = pixels * (bands * itemsize + 1)  # values and validity mask
    # float32 copy, nodata fill, padding; the input tensor itself.
    copies = 3 * pixels * bands * 4
    # Outputs as the runtime returns them, cropped copies, upsampled views.
    outputs = int(3 * pixels * outputs_per_px)
    return int(decoded + copies + pixels * activation_per_px + outputs)


def series_bytes(
    rows: int,
    dates: int,
    bands: int,
    itemsize: int,
    activation_per_row_date: float,
    batch_rows: int,
    outputs_per_row_date: float,
) -> int:
    """Estimated peak bytes of ``rows`` series of ``dates`` x ``bands`` through a temporal model.

    The batcher runs at most ``batch_rows`` rows at a time, so activations are
    bounded by that; inputs and outputs are held for every row.
    """
    values = rows * dates * bands
    decoded = values * itemsize + rows * dates  # values and validity
    copies = 3 * values * 4  # float32 stack, series transposed, batch feed
    running = min(rows, batch_rows) * dates * activation_per_row_date
    outputs = int(2 * rows * dates * outputs_per_row_date)
    return int(decoded + copies + running + outputs)


@dataclass(frozen=True)
class SceneLoad:
    """What a scene job's tiles cost besides the model: how they are cut and run.

    Attributes:
        per_unit: the model's working memory per unit of input (pixel, or row x date).
        max_batch: units (tiles or series rows) the batcher runs at a time.
        tile: side of a tile, in pixels, without its halo.
        dates: dates per series (1 for images).
        in_flight: tiles read and waiting for the model at a time.
    """

    per_unit: float
    max_batch: int
    tile: int
    dates: int
    in_flight: int
