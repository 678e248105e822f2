"""The GDAL configuration for user data: risky drivers skipped, no remote reads."""

from __future__ import annotations

import os

import pytest
import rasterio
from rasterio.env import get_gdal_config

from service.raster.gdal_env import (
    BLOCK_CACHE_MAX_BYTES,
    BLOCK_CACHE_MIN_BYTES,
    HARDENED_GDAL,
    SKIPPED_DRIVERS,
    disable_risky_drivers,
    reserve_block_cache,
)


def test_risky_drivers_are_skipped_unless_the_operator_chose_a_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:

    monkeypatch.delenv("GDAL_SKIP", raising=False)
    disable_risky_drivers()
    skipped = os.environ["GDAL_SKIP"].split()
    assert {"VRT", "MRF", "HTTP", "WMS"} <= set(skipped)
    assert os.environ["GDAL_SKIP"] == SKIPPED_DRIVERS
    monkeypatch.setenv("GDAL_SKIP", "VRT")
    disable_risky_drivers()
    assert os.environ["GDAL_SKIP"] == "VRT"


def test_the_hardened_settings_forbid_remote_and_sidecar_reads() -> None:
    assert HARDENED_GDAL["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert HARDENED_GDAL["GDAL_PAM_ENABLED"] == "NO"
    assert HARDENED_GDAL["GDAL_VRT_ENABLE_PYTHON"] == "NO"
    assert not HARDENED_GDAL["CPL_VSIL_CURL_ALLOWED_EXTENSIONS"].endswith(".tif")


def test_the_block_cache_is_process_wide_bounded_and_only_grows() -> None:
    # rasterio takes GDAL_CACHEMAX as bytes and resets it when an Env exits:
    # the hardened settings leave it alone.
    assert "GDAL_CACHEMAX" not in HARDENED_GDAL
    size = reserve_block_cache()
    assert BLOCK_CACHE_MIN_BYTES <= size <= BLOCK_CACHE_MAX_BYTES
    assert get_gdal_config("GDAL_CACHEMAX") == size
    assert reserve_block_cache(1) == size
    with rasterio.Env(**HARDENED_GDAL):
        assert get_gdal_config("GDAL_CACHEMAX") == size
    assert get_gdal_config("GDAL_CACHEMAX") == size
    assert reserve_block_cache(BLOCK_CACHE_MAX_BYTES * 4) == BLOCK_CACHE_MAX_BYTES
    assert get_gdal_config("GDAL_CACHEMAX") == BLOCK_CACHE_MAX_BYTES
