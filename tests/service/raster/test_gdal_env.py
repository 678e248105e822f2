"""The GDAL configuration for user data: risky drivers skipped, no remote reads."""

from __future__ import annotations

import os

import pytest

from service.raster.gdal_env import HARDENED_GDAL, SKIPPED_DRIVERS, disable_risky_drivers


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
