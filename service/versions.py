"""Versions of the moving parts: attnserve, ONNX Runtime and its providers, GDAL and rasterio."""

from __future__ import annotations

import rasterio

from service import __version__
from service.runtime.providers import runtime_versions


def stack_versions() -> dict[str, str | list[str]]:
    """What ``/healthz`` reports: each part's version and ONNX Runtime's available providers."""
    return {
        "attnserve": __version__,
        **runtime_versions(),
        "gdal": rasterio.__gdal_version__,
        "rasterio": rasterio.__version__,
    }
