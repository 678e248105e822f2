"""Chip classifiers in the pipeline: a chip in, its class probabilities and attention maps out.

A chip is one synchronous image; its class probabilities ``(K,)`` come inline
in the answer, and every attention output (spatial maps at any stride, token
grids) as a map on the chip's grid, served as JSON and GeoTIFF. Scenes are not
classified chip by chip: a scene job for such a model is refused.
"""

from __future__ import annotations

from typing import Any, NoReturn

import numpy as np

from service.errors import UnsupportedRaster
from service.pipeline.inputs import RasterInput
from service.pipeline.scene_grid import SceneWork
from service.pipeline.tasks.base import Prediction, SyncTask, output_layer
from service.raster.decode import RasterInfo
from service.runtime.chips import ChipClassifier
from service.runtime.manifest import Manifest


def no_scenes(manifest: Manifest) -> NoReturn:
    """Refuse a scene job of a chip classifier."""
    raise UnsupportedRaster(
        f"model {manifest.ref!r} classifies one chip per request and runs no scene jobs: "
        "send a chip synchronously (not async, within ATTNSERVE_MAX_SYNC_PIXELS)"
    )


class ChipClassification(SyncTask[RasterInput, ChipClassifier]):
    """A chip in; class probabilities for all of it and attention maps on its grid out."""

    name = "image classification"
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
        answer = output_layer(pred, out.probabilities, classes=classes, values=values)
        answer.description = f"most probable: {classes[best]} ({values[best]:.3f})"
        layers = [answer]
        arrays: dict[str, np.ndarray] = {pred.name: out.probabilities}
        for spec in manifest.attention:
            arrays[spec.name] = out.maps[spec.name]
            layers.append(output_layer(spec, out.maps[spec.name]))
        h, w = inp.data.shape[1:]
        georef: dict[str, Any]
        if inp.georef is not None:
            georef = inp.georef.to_json()
        else:
            georef = {"crs": None, "transform": [1, 0, 0, 0, 1, 0], "width": w, "height": h}
        return Prediction("raster", layers, arrays, georef)

    def check_scene_file(self, manifest: Manifest, info: RasterInfo) -> None:
        """No scene is taken."""
        no_scenes(manifest)

    def check_scene_dates(
        self, manifest: Manifest, infos: list[RasterInfo], dates: list[str]
    ) -> None:
        """Chips have no dates."""

    async def run_scene(self, work: SceneWork) -> None:
        """Never reached: scene jobs are refused when they are checked."""
        no_scenes(work.served.manifest)
