"""The pipeline's task registry: one class per task the manifests know."""

from __future__ import annotations

import pytest

from service.config import SHIPPED_MODELS
from service.pipeline.tasks import TASKS, task_for
from service.pipeline.tasks.segmentation import ImageSegmentation
from service.pipeline.tasks.temporal import TemporalClassification
from service.runtime.session import ModelSession, SessionOptions
from service.runtime.tasks import INFERENCE_TASKS


def test_every_task_a_manifest_may_name_has_a_pipeline_and_a_runtime_class() -> None:
    assert set(TASKS) == set(INFERENCE_TASKS)


@pytest.mark.parametrize(
    ("pattern", "kind"),
    [("footprints-*.onnx", ImageSegmentation), ("crops-1*.onnx", TemporalClassification)],
)
def test_shipped_models_get_the_class_of_their_task(pattern: str, kind: type) -> None:
    path = next(SHIPPED_MODELS.glob(pattern))
    manifest = ModelSession(path, SessionOptions(providers=("CPUExecutionProvider",))).manifest
    assert isinstance(task_for(manifest), kind)
