"""Model tasks in the pipeline, one class each, chosen by the manifest's ``task``."""

from __future__ import annotations

from service.pipeline.tasks.base import Prediction, Task
from service.pipeline.tasks.chips import ChipClassification
from service.pipeline.tasks.classes import ClassSegmentation
from service.pipeline.tasks.segmentation import ImageSegmentation
from service.pipeline.tasks.temporal import TemporalClassification
from service.runtime.manifest import Manifest

TASKS: dict[str, Task] = {
    "segmentation": ImageSegmentation(),
    "temporal_classification": TemporalClassification(),
    "image_classification": ChipClassification(),
}

# A task whose prediction is of another kind: (task, prediction kind) -> its class.
BY_PREDICTION: dict[tuple[str, str], Task] = {
    ("segmentation", "class_probabilities"): ClassSegmentation(),
}


def task_for(manifest: Manifest) -> Task:
    """The pipeline task of a manifest's ``task`` and the kind of its prediction."""
    task = BY_PREDICTION.get((manifest.task, manifest.prediction.kind))
    return task if task is not None else TASKS[manifest.task]


__all__ = ["TASKS", "Prediction", "Task", "task_for"]
