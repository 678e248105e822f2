"""Returning freed heap memory to the operating system (glibc only).

Decoding rasters and running batches of varying shapes churns large numpy
buffers across threads; glibc keeps freed chunks in its arenas, so a long-lived
server's resident memory creeps up although nothing is leaked. Trimming the
heaps now and then gives that memory back.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)


def malloc_trim() -> Callable[[], int] | None:
    """glibc's ``malloc_trim(0)`` as a function, or None where libc has none."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS)
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
