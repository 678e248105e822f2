"""What ONNX Runtime offers here, as reported by the runtime."""

from __future__ import annotations

import onnxruntime as ort

from service.config import SHIPPED_MODELS
from service.runtime.providers import available_providers, runtime_versions


def test_every_listed_provider_can_be_asked_for_and_cpu_is_one() -> None:
    providers = available_providers()
    assert "CPUExecutionProvider" in providers
    assert providers[-1] == "CPUExecutionProvider"  # the fallback comes last
    model = SHIPPED_MODELS / "crops-1.0.0.onnx"
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    assert session.get_providers() == ["CPUExecutionProvider"]


def test_versions_name_the_running_onnx_runtime() -> None:
    versions = runtime_versions()
    assert versions["onnxruntime"] == ort.__version__
    assert str(versions["onnxruntime"]).count(".") >= 2
    assert versions["available_providers"] == available_providers()
