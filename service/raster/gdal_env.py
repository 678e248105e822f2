"""The GDAL configuration every open and read of user data runs under."""

from __future__ import annotations

import os
from typing import Any

# Drivers that read other files or URLs; never registered (see disable_risky_drivers).
SKIPPED_DRIVERS = "VRT MRF WMS WCS WFS HTTP DAAS EEDA PLMosaic OGCAPI STACIT STACTA"

# Applied around every open and read of user data.
HARDENED_GDAL: dict[str, Any] = {
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "GDAL_PAM_ENABLED": "NO",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".attnserve-no-remote",
    "GDAL_HTTP_MAX_RETRY": "0",
    "GDAL_CACHEMAX": 256,
    "GTIFF_REPORT_COMPD_CS": "NO",
    "CPL_DEBUG": "OFF",
    # Belt and braces should a VRT ever be opened: no Python pixel functions,
    # no raw bands reading arbitrary local files.
    "GDAL_VRT_ENABLE_PYTHON": "NO",
    "VRT_ENABLE_RAWRASTERBAND": "NO",
}


def disable_risky_drivers() -> None:
    """Keep GDAL from ever registering drivers that read other files or URLs.

    GDAL reads ``GDAL_SKIP`` once, when it first registers its drivers; setting
    it later has no effect on a process that already opened anything (and only
    logs a warning per open for drivers this build lacks). The server entry
    point calls this before any raster is touched, so the skip holds
    process-wide.
    """
    os.environ.setdefault("GDAL_SKIP", SKIPPED_DRIVERS)
