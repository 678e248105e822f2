"""Connected regions of a raster mask, labelled a block of rows at a time.

A mask too large to hold (the footprints of a 16384 x 16384 scene) is labelled
block by block, 4-connected as footprints are polygonised; a region crossing a
block's edge is joined to the regions it touches above it. Only the block, the
regions still open at its last row and the regions kept are held, so memory
depends on the raster's width, never on its height.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# 4-connectivity: pixels touching only at a corner are separate regions.
FOUR = ndimage.generate_binary_structure(2, 1)


class TooManyRegions(Exception):
    """More regions were kept than the limit allows."""


@dataclass(frozen=True)
class Region:
    """One connected region of equal, non-zero mask values.

    Attributes:
        code: its mask value.
        top, bottom, left, right: its extent in raster pixels (bottom and right exclusive).
        first: ``row * width + col`` of its first pixel in row-major order.
        pixels: its number of pixels.
    """

    code: int
    top: int
    bottom: int
    left: int
    right: int
    first: int
    pixels: int

    def seed(self, width: int) -> tuple[int, int]:
        """``(row, col)`` of its first pixel."""
        row, col = divmod(self.first, width)
        return int(row), int(col)

    def joined(self, other: Region) -> Region:
        """The region made of both."""
        return Region(
            self.code,
            min(self.top, other.top),
            max(self.bottom, other.bottom),
            min(self.left, other.left),
            max(self.right, other.right),
            min(self.first, other.first),
            self.pixels + other.pixels,
        )


def label(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """4-connected labels of a code mask (0: none), and each label's code (index 0: none)."""
    if int(mask.max(initial=0)) <= 1:  # a binary mask (buildings): one labelling, no copies
        labels, n = ndimage.label(mask, FOUR)
        return labels, np.concatenate([[0], np.ones(n, dtype=np.int64)])
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=1))
    present = present[present > 0]
    labels = np.zeros(mask.shape, dtype=np.int32)
    codes = [np.zeros(1, dtype=np.int64)]
    count = 0
    for code in present:
        part, n = ndimage.label(mask == code, FOUR)
        labels[part > 0] = part[part > 0] + count
        codes.append(np.full(n, code, dtype=np.int64))
        count += n
    return labels, np.concatenate(codes)


@dataclass(frozen=True)
class _Block:
    """One block's labels and, per label, its code and extent in raster terms."""

    labels: np.ndarray
    codes: np.ndarray
    top: np.ndarray
    bottom: np.ndarray
    left: np.ndarray
    right: np.ndarray
    first: np.ndarray
    pixels: np.ndarray

    @classmethod
    def of(cls, mask: np.ndarray, first_row: int, min_pixels: float) -> _Block:
        """The block's labels; extents only of those that may be kept or go on in another block.

        Labels that end inside the block with fewer than ``min_pixels`` pixels
        (most of a noisy mask's) are counted and otherwise left alone.
        """
        labels, codes = label(mask)
        count, width = len(codes), labels.shape[1]
        pixels = np.bincount(labels.ravel(), minlength=count)
        wanted = pixels >= min_pixels
        wanted[labels[0]] = wanted[labels[-1]] = True
        wanted[0] = False
        ids = np.flatnonzero(wanted)
        renumbered = np.zeros(count, dtype=np.int32)
        renumbered[ids] = np.arange(1, len(ids) + 1, dtype=np.int32)
        wanted_labels = renumbered[labels]
        extents = np.zeros((4, count), dtype=np.int64)  # top, bottom, left, right
        first = np.zeros(count, dtype=np.int64)
        for j, (rows, cols) in enumerate(ndimage.find_objects(wanted_labels), start=1):
            i = ids[j - 1]
            extents[:, i] = rows.start, rows.stop, cols.start, cols.stop
            col = cols.start + int(np.argmax(wanted_labels[rows.start, cols] == j))
            first[i] = rows.start * width + col
        top, bottom, left, right = extents
        return cls(
            labels,
            codes,
            top + first_row,
            bottom + first_row,
            left,
            right,
            first + first_row * width,
            pixels,
        )

    def region(self, i: int) -> Region:
        """Label ``i``'s region within this block."""
        return Region(
            int(self.codes[i]), int(self.top[i]), int(self.bottom[i]), int(self.left[i]),
            int(self.right[i]), int(self.first[i]), int(self.pixels[i]),
        )  # fmt: skip


def _root(parent: dict[int, int], key: int) -> int:
    while parent.get(key, key) != key:
        key = parent[key]
    return key


def regions(
    blocks: Iterable[tuple[int, np.ndarray]],
    width: int,
    min_pixels: float = 0.0,
    limit: int | None = None,
) -> list[Region]:
    """The regions of a mask given as blocks of rows, with at least ``min_pixels`` pixels.

    Args:
        blocks: ``(first row, (rows, width) uint8)`` blocks, top to bottom, that
            cover the mask; 0 is no region, any other value a region's code.
        width: the mask's width.
        min_pixels: smaller regions are dropped as soon as they are complete.
        limit: most regions kept.

    Returns:
        The regions kept, in the row-major order of their first pixels.

    Raises:
        TooManyRegions: more than ``limit`` regions kept (raised as soon as they are).
    """
    kept: list[Region] = []
    # The last row seen: each pixel's open region (a key of ``open_``), -1 for none.
    above = np.full(width, -1, dtype=np.int64)
    open_: dict[int, Region] = {}
    next_key = 0

    def keep(region: Region) -> None:
        if region.pixels >= min_pixels:
            kept.append(region)
            if limit is not None and len(kept) > limit:
                raise TooManyRegions

    for first_row, mask in blocks:
        block = _Block.of(mask, first_row, min_pixels)
        count = len(block.codes)
        base = next_key
        keys = np.arange(count, dtype=np.int64) + base
        next_key += count
        # Regions of this block touching an open region above are joined (union-find).
        parent: dict[int, int] = {}
        row = block.labels[0]
        touch = (row > 0) & (above >= 0)
        for up, down in set(zip(above[touch].tolist(), keys[row[touch]].tolist(), strict=True)):
            if open_[up].code != int(block.codes[down - base]):
                continue
            parent.setdefault(up, up)
            parent.setdefault(down, down)
            a, b = _root(parent, up), _root(parent, down)
            if a != b:
                parent[b] = a
        joined: dict[int, Region] = {}
        for key in parent:
            member = open_[key] if key in open_ else block.region(key - base)
            r = _root(parent, key)
            joined[r] = joined[r].joined(member) if r in joined else member
        for key, region in open_.items():
            if key not in parent:  # nothing below it: complete
                keep(region)
        grouped = np.array([k - base for k in parent if k not in open_], dtype=np.int64)
        for i in grouped.tolist():  # each label goes to its group
            keys[i] = _root(parent, i + base)
        last = block.labels[-1]
        continuing = np.zeros(count, dtype=bool)
        continuing[last[last > 0]] = True
        open_keys = set(keys[continuing].tolist())
        for r, region in joined.items():
            if r not in open_keys:
                keep(region)
        alone = np.ones(count, dtype=bool)
        alone[0] = False
        alone[grouped] = False
        for i in np.flatnonzero(alone & ~continuing & (block.pixels >= min_pixels)).tolist():
            keep(block.region(i))
        open_ = {}
        for i in np.flatnonzero(continuing).tolist():
            key = int(keys[i])
            if key not in open_:
                open_[key] = joined[key] if key in joined else block.region(i)
        above = np.where(last > 0, keys[last], -1)
    for region in open_.values():
        keep(region)
    return sorted(kept, key=lambda r: r.first)
