"""The shipped models' manifests, read from their ONNX files by ONNX Runtime."""

from __future__ import annotations

import onnxruntime as ort
import pytest

from service.config import SHIPPED_MODELS
from service.runtime.manifest import Manifest
from service.runtime.session import read_manifest


def read_shipped(name: str) -> Manifest:
    """The manifest of the shipped model file ``name`` (no ``.onnx``)."""
    path = SHIPPED_MODELS / f"{name}.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return read_manifest(session)


@pytest.fixture(scope="session")
def footprints() -> Manifest:
    """The shipped footprints model's manifest: image ``(B, 3, H, W)`` FP32 and band_mean."""
    return read_shipped("footprints-2.0.0")


@pytest.fixture(scope="session")
def crops() -> Manifest:
    """The shipped crops model's manifest: series, days and valid."""
    return read_shipped("crops-1.0.0")
