"""The versions /healthz reports, against what each library says of itself."""

from __future__ import annotations

import onnxruntime as ort
import rasterio
from rasterio.env import GDALVersion

import service
from service.versions import stack_versions


def test_versions_are_those_of_the_loaded_libraries() -> None:
    versions = stack_versions()
    assert list(versions) == [
        "attnserve",
        "onnxruntime",
        "available_providers",
        "gdal",
        "rasterio",
    ]
    assert versions["attnserve"] == service.__version__
    assert versions["onnxruntime"] == ort.__version__
    assert versions["rasterio"] == rasterio.__version__
    # The GDAL rasterio runs on, not the one it was built against.
    runtime = GDALVersion.runtime()
    assert str(versions["gdal"]).startswith(f"{runtime.major}.{runtime.minor}")
    assert "CPUExecutionProvider" in versions["available_providers"]
