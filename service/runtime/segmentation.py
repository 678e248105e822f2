"""Segmentation models (e.g. footprints): pad, batch, run, crop and mask one image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from service.memory import SceneLoad
from service.runtime.batcher import DynamicBatcher
from service.runtime.feeds import SameShapeBatches
from service.runtime.manifest import Manifest

# Class maps are uint8 with 255 as nodata.
MAX_CLASSES = 254


@dataclass
class RasterOutputs:
    """A model's outputs for one image, cropped to the image and masked.

    Attributes:
        layers: output name -> array; spatial outputs are ``(1, H, W)`` float32
            with NaN where the input had no data, channel outputs ``(C,)``.
            Outputs with a stride ``s > 1`` stay at their own resolution, as
            ``(1, h, w)`` with ``h = min(ceil(H / s) + 1, padded H / s)``: the
            values an upsampling to ``(H, W)`` needs (see :func:`upsample`),
            not masked.
        valid: ``(H, W)`` bool, where the input had data (None: everywhere).
    """

    layers: dict[str, np.ndarray]
    valid: np.ndarray | None


def context_px(manifest: Manifest) -> int:
    """Pixels of context read around each scene tile (its halo), from the manifest.

    Half the model's tile overlap, rounded so that tile plus halo stays a
    multiple of the model's size multiple.
    """
    multiple = manifest.input.size_multiple or 1
    half = max(1, multiple // 2)
    want = (manifest.input.tile_overlap or 0) // 2
    return -(-want // half) * half


def pad_to_multiple(image: np.ndarray, multiple: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Reflect-pad ``(C, H, W)`` so H and W are multiples of ``multiple``.

    Returns:
        The padded image and the original ``(H, W)``.
    """
    _, h, w = image.shape
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return image, (h, w)
    # Reflection needs the pad to be shorter than the side; tiny images fall back
    # to repeating the edge.
    if ph < h and pw < w:
        return np.pad(image, ((0, 0), (0, ph), (0, pw)), mode="reflect"), (h, w)
    return np.pad(image, ((0, 0), (0, ph), (0, pw)), mode="edge"), (h, w)


def native_extent(size: int, stride: int, padded: int) -> int:
    """Values of a stride-``stride`` output kept for an input side of ``size`` pixels.

    ``ceil(size / stride)`` cover the input; one more (where the padded tile has
    it) lets :func:`upsample` reproduce, at the last pixels, exactly what
    upsampling the whole padded tile and then cropping would give.
    """
    return min(-(-size // stride) + 1, padded // stride)


def _linear_axis(size: int, stride: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices and weights of half-pixel linear interpolation along one axis."""
    pos = (np.arange(size, dtype=np.float64) + 0.5) / stride - 0.5
    pos = np.clip(pos, 0.0, n - 1)
    low = np.floor(pos).astype(np.intp)
    high = np.minimum(low + 1, n - 1)
    return low, high, (pos - low).astype(np.float32)


def upsample(
    native: np.ndarray,
    stride: int,
    height: int,
    width: int,
    window: tuple[slice, slice] | None = None,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Bilinear upsampling of a 2-D map by ``stride`` to ``(height, width)`` float32.

    The same as ONNX ``Resize`` (``linear``, ``half_pixel``) or PyTorch's
    ``interpolate(mode="bilinear", align_corners=False)`` by an integer scale:
    output pixel centre ``y + 0.5`` samples the map at ``(y + 0.5) / stride - 0.5``,
    clamped at the edges. NaN spreads to the pixels that interpolate from it.

    ``window`` (rows, columns of the full result) computes only that part, the
    same values; ``out``, of the result's shape, receives it.
    """
    values = np.asarray(native, dtype=np.float32)
    rows, cols = window or (slice(0, height), slice(0, width))
    if stride == 1:
        part = values[:height, :width][rows, cols]
        if out is None:
            return np.array(part)
        out[...] = part
        return out
    n, m = values.shape
    # Columns first, on the small map; the rows, gathered along axis 0, then
    # give a C-contiguous result.
    low, high, frac = (a[cols] for a in _linear_axis(width, stride, m))
    across = values[:, low] + (values[:, high] - values[:, low]) * frac
    low, high, frac = (a[rows] for a in _linear_axis(height, stride, n))
    top = across[low]
    if out is None:
        out = np.empty(top.shape, np.float32)
    np.subtract(across[high], top, out=out)
    out *= frac[:, None]
    out += top
    return out


def coarse_valid(valid: np.ndarray, stride: int) -> np.ndarray:
    """``(ceil(H/s), ceil(W/s))`` bool: which stride-``s`` cells hold any valid pixel."""
    h, w = valid.shape
    rows, cols = -(-h // stride), -(-w // stride)
    padded = np.zeros((rows * stride, cols * stride), dtype=bool)
    padded[:h, :w] = valid
    return np.asarray(padded.reshape(rows, stride, cols, stride).any(axis=(1, 3)))


def band_means(image: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """``(C,)`` float32 mean of each band over the valid pixels (all if none are)."""
    if valid is not None and valid.any():
        means = image[:, valid].mean(axis=1, dtype=np.float64)
    else:
        means = image.reshape(image.shape[0], -1).mean(axis=1, dtype=np.float64)
    return np.asarray(means, dtype=np.float32)


def class_map(probabilities: np.ndarray, min_confidence: float | None, nodata: int) -> np.ndarray:
    """``(H, W)`` uint8 class indices of ``(K, H, W)`` probabilities (NaN where no data).

    A pixel gets the class of its highest probability; ``nodata`` where its
    probabilities are NaN or the highest is below ``min_confidence``.
    """
    filled = np.nan_to_num(probabilities, nan=-1.0)
    best = filled.argmax(axis=0)
    top = np.take_along_axis(filled, best[None], axis=0)[0]
    out: np.ndarray = best.astype(np.uint8)
    out[top < (min_confidence or 0.0)] = nodata
    out[top < 0] = nodata
    return out


class SegmentationTask(SameShapeBatches):
    """Runs a segmentation model on whole images through its batcher."""

    unit: ClassVar[str] = "pixel"
    dated: ClassVar[bool] = False

    @staticmethod
    def manifest_problems(manifest: Manifest) -> list[str]:
        """A class map needs named classes, fewer than its nodata value (255).

        Outputs and strides are checked for every task; token grids are a chip
        classifier's (no map of a segmentation model's image).
        """
        found = [
            f"outputs[{i}].kind: {o.name!r} is a token_grid, served by image_classification "
            "models only"
            for i, o in enumerate(manifest.outputs)
            if o.kind == "token_grid"
        ]
        kinds = [o.kind for o in manifest.outputs if o.role == "prediction"]
        count = len(manifest.classes)
        if kinds == ["class_probabilities"] and not 2 <= count <= MAX_CLASSES:
            found.append(
                f"classes: a class_probabilities prediction needs 2 to {MAX_CLASSES} class "
                f"names, not {count}"
            )
        return found

    @staticmethod
    def warmup_sizes(manifest: Manifest, cuda_active: bool) -> tuple[int | None, ...]:
        """Image sides to warm up: the tile, and on CUDA also a scene tile with its halo.

        On CUDA each new shape costs a cuDNN algorithm search (and, with CUDA
        graphs, needs a graph of its own); on CPU the extra run would only slow
        the start.
        """
        tile = manifest.input.tile_size
        if tile is None or not cuda_active:
            return (tile,)
        halo = context_px(manifest)
        return (tile, tile + 2 * halo) if halo else (tile,)

    @staticmethod
    def scene_tile(manifest: Manifest) -> int:
        """Side of a scene job's tiles when the job names none."""
        return manifest.input.tile_size or 512

    @staticmethod
    def tile_step(manifest: Manifest) -> int:
        """The model's size multiple, which every tile side must be."""
        return manifest.input.size_multiple or 1

    @staticmethod
    def outputs_per_unit(manifest: Manifest) -> float:
        """Bytes of every spatial output per input pixel."""
        total = 0.0
        for o in manifest.outputs:
            if len(o.shape) == 4 and o.kind != "channel":
                channels = o.shape[1] if isinstance(o.shape[1], int) else 1
                total += 4.0 * channels / o.stride**2
        return total

    @classmethod
    def scene_bytes(cls, manifest: Manifest, load: SceneLoad) -> int:
        """Estimated peak bytes of a scene job's tiles plus their halo.

        The batcher runs at most ``load.max_batch`` tiles at a time
        (``load.per_unit``: working memory per pixel); up to ``load.in_flight``
        tiles are read and wait meanwhile, each with its float32 values, a copy
        made for the model and the feed. ``load.dates`` does not apply.
        """
        bands = len(manifest.input.bands)
        out = cls.outputs_per_unit(manifest)
        side = load.tile + 2 * context_px(manifest)
        running = load.max_batch * side * side * (load.per_unit + 3 * out + bands * 4)
        return int(running + load.in_flight * side * side * (3 * bands * 4 + 2))

    def __init__(self, manifest: Manifest, batcher: DynamicBatcher) -> None:
        self.manifest = manifest
        self.batcher = batcher
        self.input_name = manifest.tensors[0].name
        # An optional second input takes the per-band mean of the whole image
        # (see models.attention_unet): tiles of a scene then share it.
        self.band_mean_name = manifest.tensors[1].name if len(manifest.tensors) > 1 else None

    def feed(self, tile: np.ndarray, band_mean: np.ndarray) -> dict[str, np.ndarray]:
        """The model inputs for one ``(C, H, W)`` float32 tile of an image."""
        feed = {self.input_name: tile[None]}
        if self.band_mean_name is not None:
            feed[self.band_mean_name] = band_mean.astype(np.float32)[None]
        return feed

    async def predict(
        self, image: np.ndarray, valid: np.ndarray | None, timeout_s: float
    ) -> RasterOutputs:
        """Predict one image.

        Args:
            image: ``(C, H, W)`` raw values on the model's scale, any numeric dtype.
            valid: ``(H, W)`` bool mask of pixels with data, or None for all.
            timeout_s: the request's deadline.
        """
        x = image.astype(np.float32, copy=False)
        if valid is not None:
            # Nodata pixels would otherwise feed arbitrary fill values (often 0 or
            # NaN) into the convolutions; the outputs there are masked anyway.
            x = np.where(valid[None], x, np.float32(self.manifest.input.normalization.mean[0]))
            x = np.nan_to_num(x, copy=False)
        multiple = self.manifest.input.size_multiple or 1
        band_mean = band_means(x, valid)
        padded, (h, w) = pad_to_multiple(x, multiple)
        outputs = await self.batcher.submit(self.feed(padded, band_mean), timeout_s)
        layers: dict[str, np.ndarray] = {}
        for spec in self.manifest.outputs:
            out = outputs[spec.name][0]
            if spec.kind == "channel":  # (C,) or (C, 1, 1): one weight per channel
                layers[spec.name] = np.asarray(out, dtype=np.float32).reshape(-1)
                continue
            if out.ndim == 3 and spec.stride > 1:
                rows = native_extent(h, spec.stride, padded.shape[1])
                cols = native_extent(w, spec.stride, padded.shape[2])
                out = np.array(out[:, :rows, :cols], dtype=np.float32)
            elif out.ndim == 3:
                out = np.array(out[:, :h, :w], dtype=np.float32)
                if valid is not None:
                    out[:, ~valid] = np.nan
            layers[spec.name] = out
        return RasterOutputs(layers=layers, valid=valid)
