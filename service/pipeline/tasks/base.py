"""What a model task decides in the pipeline: its results, scene jobs and scene checks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import numpy as np

from service.errors import InvalidInput
from service.jobs.record import Layer, ResamplingSummary, Series
from service.pipeline.inputs import RasterInput, SeriesInput
from service.pipeline.scene_grid import SceneOptions, SceneWork
from service.pipeline.statistics import statistics
from service.raster.cog import RasterSink
from service.raster.decode import RasterInfo
from service.runtime.manifest import Manifest, OutputSpec
from service.runtime.repository import ServedModel
from service.runtime.tasks import InferenceTask

# The class map's value where a pixel has no class (no valid date).
CLASS_NODATA = 255


@dataclass
class Prediction:
    """A synchronous result, ready to be stored as a job.

    Attributes:
        kind: the job's kind, ``raster`` or ``series``.
        layers: one per array.
        arrays: layer name -> array to store.
        georef: the georeference of raster results.
        series: dates, classes and item ids (temporal models).
        resampling: how the input went to the model's ground resolution (images).
    """

    kind: str
    layers: list[Layer]
    arrays: dict[str, np.ndarray]
    georef: dict[str, Any] | None = None
    series: Series | None = None
    resampling: ResamplingSummary | None = None


class Task(Protocol):
    """The behaviour of one model task (``manifest.task``) in the pipeline.

    Attributes:
        footprints: whether the probability maps of its raster jobs outline
            objects that footprints (polygons) are made of.
        class_maps: whether it makes class maps, which a request's
            ``min_confidence`` applies to.
    """

    footprints: ClassVar[bool]
    class_maps: ClassVar[bool]

    async def predict(
        self, served: ServedModel, inp: RasterInput | SeriesInput, timeout_s: float
    ) -> Prediction:
        """Run one synchronous input through the model and lay out its result."""
        ...

    def check_scene_file(self, manifest: Manifest, info: RasterInfo) -> None:
        """Refuse one scene file whose layout the model cannot take, from its header."""
        ...

    def check_scene_dates(
        self, manifest: Manifest, infos: list[RasterInfo], dates: list[str]
    ) -> None:
        """Refuse a scene whose files and dates do not fit together."""
        ...

    def check_scene_options(self, manifest: Manifest, options: SceneOptions) -> None:
        """Refuse a scene job's options that the task cannot follow."""
        ...

    async def run_scene(self, work: SceneWork) -> None:
        """Process a scene job tile by tile and fill its record's layers."""
        ...


InputT = TypeVar("InputT", RasterInput, SeriesInput)
ModelT = TypeVar("ModelT", bound=InferenceTask)


class SyncTask(ABC, Generic[InputT, ModelT]):
    """A task's synchronous side: inputs of one kind, run by the task's runtime class.

    Attributes:
        name: what the task is called in errors.
        footprints: see :class:`Task` (none unless a task says so).
        class_maps: see :class:`Task` (none unless a task says so).
        takes: the input kind the task runs.
        runtime: the runtime task that runs it through the model's batcher.
    """

    name: ClassVar[str]
    footprints: ClassVar[bool] = False
    class_maps: ClassVar[bool] = False
    takes: type[InputT]
    runtime: type[ModelT]

    async def predict(
        self, served: ServedModel, inp: RasterInput | SeriesInput, timeout_s: float
    ) -> Prediction:
        """Run one synchronous input through the model and lay out its result."""
        if not isinstance(inp, self.takes):
            raise wrong_input(self.name, inp)
        return await self.lay_out(self.runtime(served.manifest, served.batcher), inp, timeout_s)

    def check_scene_options(self, manifest: Manifest, options: SceneOptions) -> None:
        """Only chip classifiers walk a scene in chips (``chip_stride``)."""
        if options.chip_stride is not None:
            raise InvalidInput(
                f"chip_stride: model {manifest.ref!r} is not a chip classifier "
                "(task image_classification)"
            )

    @abstractmethod
    async def lay_out(self, model: ModelT, inp: InputT, timeout_s: float) -> Prediction:
        """Run ``inp`` through ``model``; every output becomes a layer of the result."""


def output_layer(
    spec: OutputSpec,
    array: np.ndarray,
    shape: tuple[int, ...] | None = None,
    stats: dict[str, float | None] | None = None,
    **extra: Any,
) -> Layer:
    """The layer of a model output stored as an array of its own."""
    return Layer(
        name=spec.name,
        role=spec.role,
        kind=spec.kind,
        shape=list(shape or array.shape),
        dtype=str(array.dtype),
        statistics=stats or statistics(array),
        level=spec.level,
        description=spec.description or None,
        **extra,
    )


def class_layer(manifest: Manifest, shape: list[int]) -> Layer:
    """The layer of a class map: ``uint8`` indices into the model's classes."""
    return Layer(
        name="class",
        role="prediction",
        kind="class",
        shape=shape,
        dtype="uint8",
        nodata=CLASS_NODATA,
        classes=manifest.classes,
    )


def class_sink(work: SceneWork, info: RasterInfo, classes: list[str], **extra: Any) -> RasterSink:
    """A scene's class map COG ``class.tif``: uint8 class indices, nodata where none."""
    return work.sink(
        "class.tif",
        info,
        [f"class (index into: {', '.join(classes)})"],
        dtype="uint8",
        scaled=False,
        nodata=CLASS_NODATA,
        resampling="mode",
        **extra,
    )


def wrong_input(task: str, inp: RasterInput | SeriesInput) -> TypeError:
    """The error for an input of a kind the task does not take."""
    return TypeError(f"a {task} model does not take {type(inp).__name__}")
