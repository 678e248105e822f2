"""Fixtures of the server's tests: the shipped models' manifests, read by ONNX Runtime."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from service.config import SHIPPED_MODELS
from service.runtime.manifest import Manifest
from service.runtime.session import read_manifest


def shipped_manifest(pattern: str) -> Manifest:
    """The manifest in the first shipped model file matching ``pattern``."""
    path = next(SHIPPED_MODELS.glob(pattern))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return read_manifest(session)


@pytest.fixture(scope="session")
def footprints() -> Manifest:
    """The shipped footprints model's manifest: image ``(B, 3, H, W)`` FP32 and band_mean."""
    return shipped_manifest("footprints-*.onnx")


@pytest.fixture(scope="session")
def crops() -> Manifest:
    """The shipped crops model's manifest: series, days and valid."""
    return shipped_manifest("crops-1.*.onnx")
