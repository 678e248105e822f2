"""The GDAL configuration every open and read of user data runs under."""

from __future__ import annotations

import os
import threading
from typing import Any

from rasterio.env import set_gdal_config

# Drivers that read other files or URLs; never registered (see disable_risky_drivers).
SKIPPED_DRIVERS = "VRT MRF WMS WCS WFS HTTP DAAS EEDA PLMosaic OGCAPI STACIT STACTA"

# Applied around every open and read of user data.
HARDENED_GDAL: dict[str, Any] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_PAM_ENABLED": "NO",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".attnserve-no-remote",
    "GDAL_HTTP_MAX_RETRY": "0",
    "GTIFF_REPORT_COMPD_CS": "NO",
    "CPL_DEBUG": "OFF",
    # Belt and braces should a VRT ever be opened: no Python pixel functions,
    # no raw bands reading arbitrary local files.
    "GDAL_VRT_ENABLE_PYTHON": "NO",
    "VRT_ENABLE_RAWRASTERBAND": "NO",
}

# GDAL's block cache (decoded blocks, read and written) is one per process: never
# set per read. rasterio.Env applies GDAL_CACHEMAX process-wide and restores the
# previous value on exit, so Envs entered and left on different threads leave
# whichever size exited last; and it takes an int as bytes, not MB (256 meant a
# 256-byte cache: every source block was decoded again for each read touching it,
# and a decimated read of a deflate scene decoded each block once per output row).
BLOCK_CACHE_MIN_BYTES = 64 * 2**20
BLOCK_CACHE_MAX_BYTES = 512 * 2**20
_cache_lock = threading.Lock()
_cache_bytes = 0


def reserve_block_cache(nbytes: int = 0) -> int:
    """Make GDAL's process-wide block cache at least ``nbytes`` (within bounds); its size.

    The cache only grows, from BLOCK_CACHE_MIN_BYTES up to BLOCK_CACHE_MAX_BYTES,
    so concurrent readers never shrink it under each other.
    """
    global _cache_bytes
    want = min(BLOCK_CACHE_MAX_BYTES, max(BLOCK_CACHE_MIN_BYTES, nbytes))
    with _cache_lock:
        if want > _cache_bytes:
            set_gdal_config("GDAL_CACHEMAX", want)
            _cache_bytes = want
        return _cache_bytes


def disable_risky_drivers() -> None:
    """Keep GDAL from ever registering drivers that read other files or URLs.

    GDAL reads ``GDAL_SKIP`` once, when it first registers its drivers; setting
    it later has no effect on a process that already opened anything (and only
    logs a warning per open for drivers this build lacks). The server entry
    point calls this before any raster is touched, so the skip holds
    process-wide.
    """
    os.environ.setdefault("GDAL_SKIP", SKIPPED_DRIVERS)
