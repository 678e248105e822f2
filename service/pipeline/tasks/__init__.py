"""Model tasks in the pipeline, one class each, chosen by the manifest's ``task``."""

from __future__ import annotations

from service.pipeline.tasks.base import Prediction, Task
from service.pipeline.tasks.segmentation import ImageSegmentation
from service.pipeline.tasks.temporal import TemporalClassification
from service.runtime.manifest import Manifest

TASKS: dict[str, Task] = {
    "segmentation": ImageSegmentation(),
    "temporal_classification": TemporalClassification(),
}


def task_for(manifest: Manifest) -> Task:
    """The pipeline task of a manifest's ``task``."""
    return TASKS[manifest.task]


__all__ = ["TASKS", "Prediction", "Task", "task_for"]
