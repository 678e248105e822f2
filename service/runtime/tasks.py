"""The inference side of each model task, chosen by the manifest's ``task``."""

from __future__ import annotations

from typing import ClassVar, Protocol

from service.memory import SceneLoad
from service.runtime.batcher import DynamicBatcher
from service.runtime.chips import ChipClassifier
from service.runtime.feeds import Padding
from service.runtime.manifest import Manifest
from service.runtime.segmentation import SegmentationTask
from service.runtime.temporal import TemporalTask


class InferenceTask(Protocol):
    """How a task's models are loaded, batched and run, and what their inputs cost."""

    unit: ClassVar[str]
    dated: ClassVar[bool]

    def __init__(self, manifest: Manifest, batcher: DynamicBatcher) -> None: ...

    @staticmethod
    def manifest_problems(manifest: Manifest) -> list[str]:
        """What the task asks of a manifest beyond the common checks, each as ``field: what``."""
        ...

    @staticmethod
    def padding(manifest: Manifest) -> Padding:
        """How inputs of one batch are padded to a common shape."""
        ...

    @staticmethod
    def warmup_sizes(manifest: Manifest, cuda_active: bool) -> tuple[int | None, ...]:
        """Image sides to run at warm-up."""
        ...

    @staticmethod
    def scene_tile(manifest: Manifest) -> int:
        """Side of a scene job's tiles when the job names none."""
        ...

    @staticmethod
    def tile_step(manifest: Manifest) -> int:
        """Pixels a scene tile's side is a multiple of, and shrinks by to fit the memory budget."""
        ...

    @staticmethod
    def outputs_per_unit(manifest: Manifest) -> float:
        """Bytes of every output per unit of input (pixel, or series row x date)."""
        ...

    @classmethod
    def scene_bytes(cls, manifest: Manifest, load: SceneLoad) -> int:
        """Estimated peak bytes of a scene job's tiles in flight."""
        ...


INFERENCE_TASKS: dict[str, type[InferenceTask]] = {
    "segmentation": SegmentationTask,
    "temporal_classification": TemporalTask,
    "image_classification": ChipClassifier,
}


def inference_task(manifest: Manifest) -> type[InferenceTask]:
    """The runtime task class of a manifest's ``task``."""
    return INFERENCE_TASKS[manifest.task]
