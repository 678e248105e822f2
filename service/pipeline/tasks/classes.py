"""Multi-class segmentation: class probabilities ``(B, K, H, W)`` become a class map.

A segmentation model whose prediction is of kind ``class_probabilities``. Its
images run as any segmentation model's; on top, each job gets a class map
(the most probable class, nodata where the input has none or the best
probability is below the request's ``min_confidence``, else the manifest's)
with per-class pixel counts and areas, and scenes a class COG with a colour
table.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from service.jobs.record import Layer
from service.pipeline.inputs import RasterInput
from service.pipeline.scene_grid import SceneWork
from service.pipeline.statistics import class_counts, class_statistics, pixel_area_m2
from service.pipeline.tasks.base import CLASS_NODATA, Prediction, class_layer, class_sink
from service.pipeline.tasks.segmentation import ImageSegmentation, SceneOutputs
from service.raster.decode import RasterInfo
from service.raster.tiles import class_colormap
from service.runtime.manifest import Manifest, OutputSpec
from service.runtime.segmentation import SegmentationTask, class_map

CLASS_FILE = "class.tif"


def min_confidence(manifest: Manifest, asked: float | None) -> float | None:
    """The minimum confidence a class map is made with: the request's, else the manifest's."""
    return asked if asked is not None else manifest.min_confidence


def class_map_layer(
    manifest: Manifest,
    shape: list[int],
    counts: np.ndarray,
    georef: dict[str, Any] | None,
    lowest: float | None,
) -> Layer:
    """The class map's layer, with its per-class statistics and minimum confidence ``lowest``."""
    layer = class_layer(manifest, shape)
    layer.class_statistics = class_statistics(counts, manifest.classes, pixel_area_m2(georef))
    layer.class_colors = list(manifest.class_colors) or None
    layer.min_confidence = lowest
    if lowest:
        layer.description = f"most probable class; none below {lowest:g}"
    else:
        layer.description = "most probable class"
    return layer


class ClassSceneOutputs(SceneOutputs):
    """A scene's class map, per-class probabilities and attention maps as COGs."""

    def __init__(self, work: SceneWork, info: RasterInfo, spatial: list[OutputSpec]) -> None:
        manifest = work.served.manifest
        self.manifest = manifest
        self.min_confidence = min_confidence(manifest, work.options.min_confidence)
        self.spatial = spatial
        classes = manifest.classes
        self.counts = np.zeros(len(classes), dtype=np.int64)
        names = {f"CLASS_{i}": c for i, c in enumerate(classes)}
        self.sinks = {
            "class": class_sink(
                work,
                info,
                classes,
                band_tags=[{"CLASSES": ",".join(classes), **names}],
                colormap=class_colormap(len(classes), manifest.class_colors),
            ),
            "probabilities": work.sink(
                "probabilities.tif",
                info,
                [f"probability of {c}" for c in classes],
                band_tags=[{"CLASS": c} for c in classes],
            ),
        }
        if len(spatial) > 1:
            descriptions = [f"{o.name} ({o.kind}, level {o.level})" for o in spatial[1:]]
            self.sinks["attention"] = work.sink("attention.tif", info, descriptions)

    def write(self, first: int, values: np.ndarray, col: int = 0) -> None:
        """Class map and probabilities of the first K bands; the attention maps of the rest."""
        k = len(self.manifest.classes)
        probs = values[:k]
        classes = class_map(probs, self.min_confidence, CLASS_NODATA)
        self.counts += class_counts(classes, k)
        coded = classes.astype(np.float32)
        # NaN rather than the nodata code: blocks holding no class stay unwritten.
        coded[classes == CLASS_NODATA] = np.nan
        self.sinks["class"].write(first, coded[None], col)
        self.sinks["probabilities"].write(first, probs, col)
        if "attention" in self.sinks:
            self.sinks["attention"].write(first, values[k:], col)

    def layers(self, georef: dict[str, Any] | None) -> list[Layer]:
        """The class map, the probabilities and the attention maps."""
        shape = [georef["height"], georef["width"]] if georef else []
        pred = self.spatial[0]
        cls = class_map_layer(self.manifest, shape, self.counts, georef, self.min_confidence)
        layers = [
            replace(cls, storage="cog", file=CLASS_FILE, band=1),
            Layer(
                name=pred.name,
                role=pred.role,
                kind=pred.kind,
                shape=[len(self.manifest.classes), *shape],
                dtype=self.sinks["probabilities"].dtype,
                classes=self.manifest.classes,
                description=pred.description or None,
                storage="cog",
                file="probabilities.tif",
            ),
        ]
        for i, o in enumerate(self.spatial[1:], start=1):
            layers.append(
                Layer(
                    name=o.name,
                    role=o.role,
                    kind=o.kind,
                    shape=shape,
                    dtype=self.sinks["attention"].dtype,
                    level=o.level,
                    description=o.description or None,
                    storage="cog",
                    file="attention.tif",
                    band=i,
                )
            )
        return layers


class ClassSegmentation(ImageSegmentation):
    """Images in, a class map, per-class probabilities and attention maps out."""

    name = "multi-class segmentation"
    # Footprints of a class map: each class's regions (see service.raster.footprints).
    footprints = True
    class_maps = True
    scene_outputs = ClassSceneOutputs

    async def lay_out(
        self, model: SegmentationTask, inp: RasterInput, timeout_s: float
    ) -> Prediction:
        """Segment one image; the class map comes first, then every output."""
        result = await super().lay_out(model, inp, timeout_s)
        manifest = model.manifest
        pred = manifest.prediction
        probs = result.arrays[pred.name]  # (K, H, W), NaN where no data
        lowest = min_confidence(manifest, inp.min_confidence)
        classes = class_map(probs, lowest, CLASS_NODATA)
        counts = class_counts(classes, len(manifest.classes))
        for layer in result.layers:
            if layer.name == pred.name:
                layer.classes = manifest.classes
        shape = list(classes.shape)
        result.layers.insert(0, class_map_layer(manifest, shape, counts, result.georef, lowest))
        result.arrays = {"class": classes, **result.arrays}
        return result
