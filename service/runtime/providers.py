"""What ONNX Runtime offers on this machine: its version and execution providers."""

from __future__ import annotations

import onnxruntime as ort


def available_providers() -> list[str]:
    """The execution providers this ONNX Runtime build can use here, in its order of preference."""
    return list(ort.get_available_providers())


def runtime_versions() -> dict[str, str | list[str]]:
    """ONNX Runtime's version and available providers, as ``/healthz`` reports them."""
    return {"onnxruntime": ort.__version__, "available_providers": available_providers()}
