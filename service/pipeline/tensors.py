"""Raw tensor feeds (the ``/v2`` protocol's) held to the server's limits and run through a model."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.errors import InvalidInput, PayloadTooLarge, UnsupportedRaster
from service.pipeline.inputs import FLOAT32_MAX, image_bytes, stack_bytes
from service.runtime.manifest import Manifest
from service.runtime.repository import ServedModel
from service.runtime.segmentation import band_means


@dataclass(frozen=True)
class TensorLimits:
    """The limits ``/predict`` has, as they apply to raw tensors."""

    max_sync_pixels: int
    max_dates: int


def check_shape(
    served: ServedModel, shape: list[int] | tuple[int, ...], limits: TensorLimits
) -> int:
    """Hold the first input's shape to ``/predict``'s limits; returns the estimated memory.

    Images: at most ``max_sync_pixels`` each; series: at most ``max_dates``
    dates (and the model's).

    Raises:
        PayloadTooLarge: an image over the synchronous limit.
        UnsupportedRaster: too many dates.
    """
    manifest = served.manifest
    name = manifest.tensors[0].name
    if not served.task.dated:
        if len(shape) != 4:
            return 0  # decoding names the problem
        batch, bands, height, width = shape
        if height * width > limits.max_sync_pixels:
            raise PayloadTooLarge(
                f"input {name!r}: a {width}x{height} image is over the "
                f"{limits.max_sync_pixels} pixel limit per image (ATTNSERVE_MAX_SYNC_PIXELS); "
                "send a GeoTIFF to /predict, which tiles large scenes"
            )
        return batch * image_bytes(served, height * width, bands, 4)
    if len(shape) < 2:
        return 0
    rows, dates = shape[:2]
    limit = min(limits.max_dates, manifest.input.max_dates or limits.max_dates)
    if dates > limit:
        raise UnsupportedRaster(
            f"input {name!r}: {dates} dates given; at most {limit} are taken", got_dates=dates
        )
    return stack_bytes(served, rows, dates, 4)


def check_feed(served: ServedModel, feed: dict[str, np.ndarray], limits: TensorLimits) -> int:
    """Hold raw tensors to the limits ``/predict`` has; returns their estimated memory in bytes.

    The shape limits of :func:`check_shape`; float values finite (days within
    float32), and a valid date in every row of a series.

    Raises:
        PayloadTooLarge: an image over the synchronous limit.
        InvalidInput: values or masks that ``/predict`` would refuse.
    """
    manifest = served.manifest
    for name, array in feed.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise InvalidInput(
                f"input {name!r}: values must be finite and within +-{FLOAT32_MAX:.4g}"
            )
    need = check_shape(served, feed[manifest.tensors[0].name].shape, limits)
    if not served.task.dated:
        return need
    for spec in manifest.tensors[1:]:
        mask = feed.get(spec.name)  # an input with a default may be filled later
        if mask is None or mask.dtype != np.bool_ or mask.ndim != 2:
            continue
        if not mask.any(axis=1).all():
            row = int(np.flatnonzero(~mask.any(axis=1))[0])
            raise InvalidInput(f"input {spec.name!r}: row {row} has no valid date")
    return need


def fill_defaults(manifest: Manifest, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The feed with each left-out input that has a default filled in.

    ``band_mean``: each image's per-band mean, ``(B, C)`` float32, as
    ``/predict`` computes it for a whole image.
    """
    first = manifest.tensors[0].name
    out = dict(feed)
    for spec in manifest.tensors:
        if spec.name in out or spec.default != "band_mean" or first not in out:
            continue
        images = out[first]
        out[spec.name] = np.stack([band_means(image, None) for image in images])
    return out


async def infer(
    served: ServedModel, feed: dict[str, np.ndarray], timeout_s: float
) -> dict[str, np.ndarray]:
    """Every output of the model for a batch-first feed, through its dynamic batcher.

    Raises:
        Overloaded: the model's queue is full.
        DeadlineExceeded: no result within ``timeout_s``.
        InferenceFailed: the session failed on the batch.
    """
    return await served.batcher.submit(fill_defaults(served.manifest, feed), timeout_s)
