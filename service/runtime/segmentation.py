"""Segmentation models (e.g. footprints): pad, batch, run, crop and mask one image."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.runtime.batcher import DynamicBatcher
from service.runtime.manifest import Manifest


@dataclass
class RasterOutputs:
    """A model's outputs for one image, cropped to the image and masked.

    Attributes:
        layers: output name -> array; spatial outputs are ``(1, H, W)`` float32
            with NaN where the input had no data, channel outputs ``(C,)``.
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


def band_means(image: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """``(C,)`` float32 mean of each band over the valid pixels (all if none are)."""
    if valid is not None and valid.any():
        return image[:, valid].mean(axis=1, dtype=np.float64).astype(np.float32)
    return image.reshape(image.shape[0], -1).mean(axis=1, dtype=np.float64).astype(np.float32)


class SegmentationTask:
    """Runs a segmentation model on whole images through its batcher."""

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
            if out.ndim == 3:
                out = np.array(out[:, :h, :w], dtype=np.float32)
                if valid is not None:
                    out[:, ~valid] = np.nan
            layers[spec.name] = out
        return RasterOutputs(layers=layers, valid=valid)
