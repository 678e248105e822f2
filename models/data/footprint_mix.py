"""Batches for footprints training: real crops, negatives and synthetic tiles mixed.

Every image is decoded once and kept in memory as an :class:`ImagePyramid`, so a
batch costs a few resampled crops and no file reads. Each crop comes from the
synthetic generator with probability ``synthetic_ratio``, from an image without
buildings with probability ``negative_ratio``, and otherwise from an image with
buildings. Images are drawn in proportion to their pixel count, so every area
of the data is as likely as any other, or (``balance="groups"``) each group
(a folder such as a Dubai ``Tile N``) is drawn as often as any other, and its
images by pixel count within it: a few large images of one place then no
longer make up most of the batches.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from models.data.augment import ImagePyramid, Radiometry, radiometric
from models.data.buildings import SceneConfig, make_batch
from models.data.footprint_sources import LabelledImage


@dataclass(frozen=True)
class MixConfig:
    """How a batch is drawn.

    Attributes:
        tile_size: crop side in pixels.
        scale: range of source pixels per crop pixel for images with buildings.
        negative_scale: the same for negatives (often finer imagery, shrunk more).
        synthetic_ratio: share of crops from the synthetic generator.
        negative_ratio: share of crops from the negatives (when there are any).
        balance: ``"pixels"`` (every pixel as likely) or ``"groups"`` (every group
            as likely, pixels within it).
        value_range: raw values of the data's 0..1 (for radiometric changes).
        radiometry: radiometric augmentation; None: off.
        scenes: synthetic generator settings.
    """

    tile_size: int = 256
    scale: tuple[float, float] = (0.5, 2.0)
    negative_scale: tuple[float, float] = (0.5, 8.0)
    synthetic_ratio: float = 0.0
    negative_ratio: float = 0.15
    balance: str = "pixels"
    value_range: tuple[float, float] = (0.0, 255.0)
    radiometry: Radiometry | None = field(default_factory=Radiometry)
    scenes: SceneConfig = field(default_factory=SceneConfig)


def _levels(scale: tuple[float, float]) -> int:
    """Pyramid levels needed to shrink by up to ``scale[1]`` without aliasing."""
    return max(1, round(math.log2(max(scale[1], 1.0))) + 1)


# Class-map value of pixels whose other class is unknown (negatives, synthetic
# tiles, images without a class map): the auxiliary loss skips them.
UNKNOWN_CLASS = -100


class Batch(NamedTuple):
    """Raw values ``(B, C, S, S)`` float32, building masks ``(B, 1, S, S)`` and
    class maps ``(B, S, S)`` int64 (:data:`UNKNOWN_CLASS` where not known)."""

    x: torch.Tensor
    y: torch.Tensor
    classes: torch.Tensor


class TrainingMix:
    """Draws batches (:class:`Batch`) of augmented crops."""

    def __init__(
        self,
        positives: Sequence[LabelledImage],
        negatives: Sequence[LabelledImage],
        config: MixConfig,
    ) -> None:
        if not positives and config.synthetic_ratio < 1.0:
            raise ValueError("real training needs at least one image with buildings")
        self.config = config
        self.positives = [
            ImagePyramid(i.image, i.mask, _levels(config.scale), i.classes) for i in positives
        ]
        self.negatives = [
            ImagePyramid(i.image, i.mask, _levels(config.negative_scale)) for i in negatives
        ]
        if config.balance not in ("pixels", "groups"):
            raise ValueError(f"balance must be 'pixels' or 'groups', not {config.balance!r}")
        groups = config.balance == "groups"
        self._p_weights = self._weights(self.positives, [i.group for i in positives], groups)
        self._n_weights = self._weights(self.negatives, [i.group for i in negatives], groups)

    @staticmethod
    def _weights(
        pyramids: Sequence[ImagePyramid], groups: Sequence[str], balance: bool
    ) -> np.ndarray:
        """Draw probability of each image: by pixels, or by pixels within equal groups."""
        px = np.array([p.pixels for p in pyramids], dtype=np.float64)
        if not len(px):
            return px
        if balance:
            names = np.array(groups)
            for name in set(groups):
                px[names == name] /= px[names == name].sum()
        return px / px.sum()

    def _crop(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        c = self.config
        u = rng.random()
        if self.negatives and u < c.negative_ratio:
            pyr = self.negatives[int(rng.choice(len(self.negatives), p=self._n_weights))]
            x, y, classes = pyr.crop(rng, c.tile_size, c.negative_scale)
        elif u < c.negative_ratio + c.synthetic_ratio or not self.positives:
            im, m = make_batch(rng, 1, c.tile_size, c.scenes)
            x, y = (
                torch.from_numpy(im[0].astype(np.float32)),
                torch.from_numpy(m[0].astype(np.float32)),
            )
            classes = None
        else:
            pyr = self.positives[int(rng.choice(len(self.positives), p=self._p_weights))]
            x, y, classes = pyr.crop(rng, c.tile_size, c.scale)
        if classes is None:
            classes = torch.full(y.shape, UNKNOWN_CLASS, dtype=torch.long)
        return x, y, classes

    def batch(self, rng: np.random.Generator, size: int) -> Batch:
        """``size`` augmented crops."""
        xs, ys, cs = [], [], []
        for _ in range(size):
            x, y, classes = self._crop(rng)
            if self.config.radiometry is not None:
                x = radiometric(rng, x, self.config.value_range, self.config.radiometry)
            xs.append(x)
            ys.append(y)
            cs.append(classes)
        return Batch(torch.stack(xs), torch.stack(ys)[:, None], torch.stack(cs))
