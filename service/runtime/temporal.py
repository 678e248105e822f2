"""Temporal classifiers (e.g. crops): series of dated observations to classes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import ClassVar

import numpy as np

from service.errors import InvalidInput
from service.memory import SceneLoad
from service.runtime.batcher import DynamicBatcher
from service.runtime.feeds import Padding
from service.runtime.manifest import Manifest


def input_names(manifest: Manifest) -> tuple[str, str, str]:
    """The graph's series, days and valid-mask input names, in manifest order."""
    names = [t.name for t in manifest.tensors]
    if len(names) != 3:
        raise ValueError(f"a temporal model takes series, days and valid inputs, not {names}")
    return names[0], names[1], names[2]


def temporal_padding(manifest: Manifest) -> Padding:
    """Padding that lets series of different lengths share a batch."""
    series, days, valid = input_names(manifest)
    outputs = {o.name: len(o.shape) - 1 for o in manifest.outputs if o.kind == "temporal"}
    return Padding(inputs={series: (1, 0.0), days: (1, 0.0), valid: (1, False)}, outputs=outputs)


def days_from_dates(dates: list[date]) -> np.ndarray:
    """Day of year of each date, counted from 1 January of the first date's year.

    Returns:
        ``(T,)`` float32; later years continue past 365.
    """
    if not dates:
        raise InvalidInput("at least one date is needed")
    origin = date(min(dates).year, 1, 1)
    return np.array([(d - origin).days for d in dates], dtype=np.float32)


@dataclass
class SeriesOutputs:
    """Outputs for N series.

    Attributes:
        probabilities: ``(N, K)`` float32.
        attention: attention output name -> ``(N, heads, T)`` float32.
    """

    probabilities: np.ndarray
    attention: dict[str, np.ndarray]


class TemporalTask:
    """Runs a temporal classifier on series through its batcher."""

    unit: ClassVar[str] = "series row x date"
    dated: ClassVar[bool] = True

    @staticmethod
    def manifest_problems(manifest: Manifest) -> list[str]:
        """A classifier names its classes; token grids are a chip classifier's."""
        found = [
            f"outputs[{i}].kind: {o.name!r} is a token_grid, served by image_classification "
            "models only"
            for i, o in enumerate(manifest.outputs)
            if o.kind == "token_grid"
        ]
        if not manifest.classes:
            found.append("classes: a classification model must list its classes")
        return found

    @staticmethod
    def padding(manifest: Manifest) -> Padding:
        """Padding that lets series of different lengths share a batch."""
        return temporal_padding(manifest)

    @staticmethod
    def warmup_sizes(manifest: Manifest, cuda_active: bool) -> tuple[int | None, ...]:
        """Series have no image side: one warm-up size, the manifest's."""
        return (manifest.input.tile_size,)

    @staticmethod
    def scene_tile(manifest: Manifest) -> int:
        """Side of a scene job's tiles when the job names none."""
        return 256

    @staticmethod
    def tile_step(manifest: Manifest) -> int:
        """Series are per pixel: any side works, and a tile too large shrinks 16 pixels a step."""
        return 16

    @staticmethod
    def outputs_per_unit(manifest: Manifest) -> float:
        """Bytes of every output per series row x date.

        ``(N, heads, T)`` attention per date; ``(N, K)`` probabilities are
        counted per date too.
        """
        return sum(
            4.0 * (o.shape[1] if isinstance(o.shape[1], int) else 1)
            for o in manifest.outputs
            if len(o.shape) >= 2
        )

    @classmethod
    def scene_bytes(cls, manifest: Manifest, load: SceneLoad) -> int:
        """Estimated peak bytes of a scene job's tiles over ``load.dates`` dates.

        The batcher runs at most ``load.max_batch`` series rows at a time
        (``load.per_unit``: working memory per row x date); up to
        ``load.in_flight`` tiles are read and wait meanwhile, each with its
        float32 values, a copy made for the model, the feed and its outputs.
        """
        bands = len(manifest.input.bands)
        out = cls.outputs_per_unit(manifest)
        pixels = load.tile * load.tile
        running = min(pixels, load.max_batch) * load.dates * (load.per_unit + bands * 4)
        held = load.in_flight * pixels * load.dates * (3 * bands * 4 + 2 + 2 * out)
        return int(running + held)

    def __init__(self, manifest: Manifest, batcher: DynamicBatcher) -> None:
        self.manifest = manifest
        self.batcher = batcher
        self.names = input_names(manifest)

    async def predict(
        self, series: np.ndarray, days: np.ndarray, valid: np.ndarray, timeout_s: float
    ) -> SeriesOutputs:
        """Classify N series.

        Args:
            series: ``(N, T, C)`` raw values on the model's scale.
            days: ``(N, T)`` or ``(T,)`` day of year of each date.
            valid: ``(N, T)`` bool, dates to consider (clear, not padding).
            timeout_s: the request's deadline.
        """
        n, t, _ = series.shape
        if days.ndim == 1:
            days = np.broadcast_to(days, (n, t))
        if not valid.any(axis=1).all():
            raise InvalidInput("every series needs at least one valid date")
        series_name, days_name, valid_name = self.names
        feed = {
            series_name: np.ascontiguousarray(series, dtype=np.float32),
            days_name: np.ascontiguousarray(days, dtype=np.float32),
            valid_name: np.ascontiguousarray(valid, dtype=bool),
        }
        outputs = await self.batcher.submit(feed, timeout_s)
        prediction = self.manifest.prediction.name
        attention = {o.name: outputs[o.name] for o in self.manifest.attention}
        return SeriesOutputs(probabilities=outputs[prediction], attention=attention)
