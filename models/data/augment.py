"""Training crops of real imagery with the augmentation other places and sensors need.

Geometry: each crop is resampled from its image at a random scale (source pixels
per training pixel, log-uniform, e.g. 0.5x to 2x), a random rotation and a
random flip, in one ``torch.nn.functional.grid_sample`` call per crop. Shrinking
by more than about 1.4x reads from a 2x / 4x / 8x area-averaged copy of the
image first, so fine texture does not alias into patterns a downsampled scene
would not show.

Radiometry (on values scaled to 0..1 by the data's value range): per-band gain
(colour), brightness, contrast, gamma, haze, Gaussian blur and noise, each
drawn per crop, so the model meets other sensors, light and atmospheres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# Mask pyramids hold the building fraction of each pixel as 0..255.
_MASK_ONE = 255.0


@dataclass(frozen=True)
class Radiometry:
    """Strength of each radiometric augmentation (0 turns one off).

    Attributes:
        gain: per-band multiplicative jitter, +-.
        brightness: additive offset, +- (fraction of the value range).
        contrast: contrast factor jitter, +-.
        gamma: log-gamma jitter, +-.
        haze: probability of a haze veil (blend towards a bright grey, up to 40%).
        blur: probability of a Gaussian blur (sigma 0.4 to 1.5 px).
        noise: largest Gaussian noise sigma (fraction of the value range).
    """

    gain: float = 0.12
    brightness: float = 0.1
    contrast: float = 0.3
    gamma: float = 0.3
    haze: float = 0.2
    blur: float = 0.25
    noise: float = 0.03


class ImagePyramid:
    """An image and its mask at 1x, 2x, 4x ... area-averaged downsamplings.

    Args:
        image: ``(C, H, W)`` uint8 or uint16 raw values.
        mask: ``(H, W)`` uint8, 1 on buildings.
        levels: number of levels (level ``k`` is downsampled by ``2**k``).
        classes: ``(H, W)`` uint8 map of other classes, or None; its levels
            take every ``2**k``-th pixel (class indices do not average).
    """

    def __init__(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        levels: int,
        classes: np.ndarray | None = None,
    ) -> None:
        self.dtype = image.dtype
        im = torch.from_numpy(image.astype(np.float32))[None]
        m = torch.from_numpy(mask.astype(np.float32) * _MASK_ONE)[None, None]
        self.images: list[np.ndarray] = [image]
        self.masks: list[np.ndarray] = [(mask * int(_MASK_ONE)).astype(np.uint8)]
        for _ in range(1, levels):
            if min(im.shape[2:]) < 4:
                break
            im, m = F.avg_pool2d(im, 2), F.avg_pool2d(m, 2)
            self.images.append(im[0].round().numpy().astype(image.dtype))
            self.masks.append(m[0, 0].round().numpy().astype(np.uint8))
        self.classes: list[np.ndarray] | None = None
        if classes is not None:
            self.classes = [
                np.ascontiguousarray(classes[:: 2**k, :: 2**k][: m.shape[0], : m.shape[1]])
                for k, m in enumerate(self.masks)
            ]

    @property
    def pixels(self) -> int:
        """Pixels of the full-resolution image."""
        return int(self.images[0].shape[1] * self.images[0].shape[2])

    def crop(
        self, rng: np.random.Generator, size: int, scale: tuple[float, float]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """A random ``size`` x ``size`` crop at a random scale, rotation and flip.

        Returns:
            Raw values ``(C, size, size)`` float32, the building mask
            ``(size, size)`` float32 in {0, 1}, and the class map ``(size,
            size)`` int64 (nearest pixel) or None when the image has none.
        """
        lo, hi = math.log(scale[0]), math.log(scale[1])
        factor = math.exp(rng.uniform(lo, hi)) if hi > lo else scale[0]
        level = min(max(round(math.log2(factor)), 0), len(self.images) - 1)
        step = factor / 2**level
        image, mask = self.images[level], self.masks[level]
        _, h, w = image.shape
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        angle = rng.uniform(0, 2 * math.pi)
        flip = -1.0 if rng.random() < 0.5 else 1.0
        # The window that holds the rotated crop, clipped to the image; beyond
        # its edges grid_sample reflects, as the image's own edges would.
        half = step * size * math.sqrt(0.5) + 2
        y0, y1 = max(int(cy - half), 0), min(math.ceil(cy + half), h)
        x0, x1 = max(int(cx - half), 0), min(math.ceil(cx + half), w)
        win = np.concatenate([image[:, y0:y1, x0:x1], mask[None, y0:y1, x0:x1]])
        src = torch.from_numpy(win.astype(np.float32))[None]
        d = (torch.arange(size, dtype=torch.float32) - size / 2 + 0.5) * step
        dy, dx = torch.meshgrid(d, d, indexing="ij")
        dx = dx * flip
        cos, sin = math.cos(angle), math.sin(angle)
        sx = cx - 0.5 + cos * dx - sin * dy  # pixel-centre coordinates in the image
        sy = cy - 0.5 + sin * dx + cos * dy
        wh, ww = y1 - y0, x1 - x0
        grid = torch.stack([(2 * (sx - x0) + 1) / ww - 1, (2 * (sy - y0) + 1) / wh - 1], dim=-1)[
            None
        ]
        out = F.grid_sample(
            src, grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )[0]
        classes = None
        if self.classes is not None:
            win_c = torch.from_numpy(self.classes[level][y0:y1, x0:x1].astype(np.float32))
            classes = (
                F.grid_sample(
                    win_c[None, None],
                    grid,
                    mode="nearest",
                    padding_mode="reflection",
                    align_corners=False,
                )[0, 0]
                .round()
                .long()
            )
        return out[:-1], (out[-1] >= _MASK_ONE / 2).float(), classes


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(C, H, W)`` with reflected edges."""
    radius = max(1, math.ceil(2.5 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[0]
    y = F.pad(x[None], (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    y = F.conv2d(y, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return y[0]


def radiometric(
    rng: np.random.Generator, x: torch.Tensor, value_range: tuple[float, float], r: Radiometry
) -> torch.Tensor:
    """Random radiometric changes to one crop of raw values ``(C, H, W)`` float32.

    Returns:
        The changed crop, raw values clipped to ``value_range``.
    """
    lo, span = value_range[0], value_range[1] - value_range[0]
    c = x.shape[0]
    v = ((x - lo) / span).clamp(0.0, 1.0)
    if r.haze and rng.random() < r.haze:
        veil = torch.from_numpy(rng.uniform(0.65, 0.95, c).astype(np.float32))[:, None, None]
        a = float(rng.uniform(0.1, 0.4))
        v = v * (1 - a) + veil * a
    if r.blur and rng.random() < r.blur:
        v = _gaussian_blur(v, float(rng.uniform(0.4, 1.5)))
    gain = rng.uniform(1 - r.gain, 1 + r.gain, c).astype(np.float32)
    v = v * torch.from_numpy(gain)[:, None, None] + float(rng.uniform(-1, 1) * r.brightness)
    mean = v.mean()
    v = (v - mean) * float(rng.uniform(1 - r.contrast, 1 + r.contrast)) + mean
    v = v.clamp(0.0, 1.0) ** float(math.exp(rng.uniform(-r.gamma, r.gamma)))
    if r.noise:
        sigma = float(rng.uniform(0, r.noise))
        v = v + sigma * torch.from_numpy(rng.standard_normal(v.shape).astype(np.float32))
    return v.clamp(0.0, 1.0) * span + lo
