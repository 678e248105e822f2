"""Chip classifiers in the pipeline: a chip in, its class probabilities and attention maps out.

A chip is one synchronous image; its class probabilities ``(K,)`` come inline
in the answer, and every attention output (spatial maps at any stride, token
grids) as a map on the chip's grid, served as JSON and GeoTIFF. A scene job
walks a large raster chip by chip (:mod:`service.pipeline.tasks.chip_scene`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.pipeline.inputs import RasterInput
from service.pipeline.scene_grid import SceneOptions, SceneWork
from service.pipeline.statistics import statistics
from service.pipeline.tasks.base import Prediction, SyncTask, output_layer
from service.pipeline.tasks.chip_scene import chip_stride, run_chip_scene
from service.pipeline.tasks.classes import min_confidence
from service.pipeline.tasks.segmentation import channel_names, channel_values
from service.raster.decode import RasterInfo
from service.runtime.chips import ChipClassifier
from service.runtime.manifest import Manifest
from service.runtime.validation import check_layout


class ChipClassification(SyncTask[RasterInput, ChipClassifier]):
    """A chip in; class probabilities for all of it and attention maps on its grid out."""

    name = "image classification"
    class_maps = True
    takes = RasterInput
    runtime = ChipClassifier

    async def lay_out(
        self, model: ChipClassifier, inp: RasterInput, timeout_s: float
    ) -> Prediction:
        """Classify one chip; the probabilities first, then one map per attention output."""
        manifest = model.manifest
        out = await model.predict(inp.data, inp.valid, timeout_s)
        classes = manifest.classes
        pred = manifest.prediction
        best = int(out.probabilities.argmax())
        values = [float(v) for v in out.probabilities]
        lowest = min_confidence(manifest, inp.min_confidence)
        answer = output_layer(
            pred, out.probabilities, classes=classes, values=values, min_confidence=lowest
        )
        answer.description = f"most probable: {classes[best]} ({values[best]:.3f})"
        if lowest is not None and values[best] < lowest:
            answer.description = (
                f"no class: the most probable, {classes[best]} ({values[best]:.3f}), "
                f"is below min_confidence {lowest:g}"
            )
        layers = [answer]
        arrays: dict[str, np.ndarray] = {pred.name: out.probabilities}
        for spec in manifest.attention:
            if spec.kind == "channel":
                weights = arrays[spec.name] = out.weights[spec.name]
                named = {**channel_names(spec, manifest), **channel_values(spec, weights)}
                layers.append(output_layer(spec, weights, **named))
                continue
            array = arrays[spec.name] = out.maps[spec.name]
            # Several heads are served as their mean unless one is asked for.
            if array.ndim == 3:
                stats = statistics(array.mean(axis=0))
                layers.append(output_layer(spec, array, stats=stats, heads=len(array)))
            else:
                layers.append(output_layer(spec, array))
        h, w = inp.data.shape[1:]
        georef: dict[str, Any]
        if inp.georef is not None:
            georef = inp.georef.to_json()
        else:
            georef = {"crs": None, "transform": [1, 0, 0, 0, 1, 0], "width": w, "height": h}
        return Prediction("raster", layers, arrays, georef)

    def check_scene_file(self, manifest: Manifest, info: RasterInfo) -> None:
        """One image of the model's bands and dtype."""
        check_layout(manifest, info.count, info.dtype)

    def check_scene_dates(
        self, manifest: Manifest, infos: list[RasterInfo], dates: list[str]
    ) -> None:
        """Chips have no dates."""

    def check_scene_options(self, manifest: Manifest, options: SceneOptions) -> None:
        """Chips of the model's size, a stride every attention map tiles."""
        chip_stride(manifest, options)

    async def run_scene(self, work: SceneWork) -> None:
        """Classify the scene chip by chip into a class raster at chip resolution."""
        await run_chip_scene(work)
