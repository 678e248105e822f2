"""Hold-out splits of crop data sets: by location where samples say where they are.

Neighbouring fields share soils, weather, calendars and often farms, and a data
set may list the same field in several seasons; a random split then puts near
copies of the test samples in training and overstates accuracy. Holding out
whole blocks of a longitude/latitude grid keeps every sample of a place on one
side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.data.crops import CropSeries


@dataclass(frozen=True)
class Split:
    """Indices of training and held-out samples, and a line saying how they were chosen."""

    train: np.ndarray
    test: np.ndarray
    description: str


def spatial_blocks(lonlat: np.ndarray, block_deg: float) -> np.ndarray:
    """``(N,) int64`` id of the ``block_deg`` x ``block_deg`` grid cell of each ``(lon, lat)``."""
    if block_deg <= 0:
        raise ValueError(f"block size must be positive, got {block_deg}")
    cells = np.floor(np.asarray(lonlat, dtype=np.float64) / block_deg).astype(np.int64)
    _, ids = np.unique(cells, axis=0, return_inverse=True)
    return np.asarray(ids).reshape(-1)


def split_by_location(data: CropSeries, fraction: float, block_deg: float, seed: int) -> Split:
    """Hold out whole spatial blocks, in a seeded random order, until ``fraction`` of samples.

    A block is skipped where holding it out would take the last training samples
    of a class: a class sampled in one place only stays in training (it could
    not be learnt otherwise), and so has no held-out figures.

    Raises:
        ValueError: the data set has no ``lonlat``, or too few blocks to hold any out.
    """
    if data.lonlat is None:
        raise ValueError("holding out by location needs lonlat (N, 2) in the data set")
    blocks = spatial_blocks(data.lonlat, block_deg)
    n_blocks = int(blocks.max()) + 1
    if n_blocks < 2:
        raise ValueError(
            f"all samples fall in one {block_deg:g} degree block; use a smaller --block-deg"
        )
    n_classes = len(data.class_names)
    # per_block[b, k]: samples of class k in block b.
    per_block = np.zeros((n_blocks, n_classes), dtype=np.int64)
    np.add.at(per_block, (blocks, data.labels), 1)
    left = per_block.sum(axis=0)
    order = np.random.default_rng(seed).permutation(n_blocks)
    target = fraction * len(data)
    held: list[int] = []
    count = 0
    for block in order:
        if count >= target:
            break
        remaining = left - per_block[block]
        if np.any((remaining == 0) & (left > 0)):
            continue
        held.append(int(block))
        left = remaining
        count += int(per_block[block].sum())
    if not held:
        raise ValueError("no block can be held out without losing a class from training")
    test_mask = np.isin(blocks, held)
    absent = [
        name
        for k, name in enumerate(data.class_names)
        if per_block[:, k].sum() and not per_block[held, k].sum()
    ]
    note = f"; no held-out samples of {', '.join(absent)}" if absent else ""
    return Split(
        train=np.flatnonzero(~test_mask),
        test=np.flatnonzero(test_mask),
        description=(
            f"held out by location: {len(held)} of {n_blocks} blocks of {block_deg:g} x "
            f"{block_deg:g} degrees (lonlat), {int(test_mask.sum())} samples, seed {seed}{note}"
        ),
    )


def split_at_random(data: CropSeries, fraction: float, seed: int) -> Split:
    """Hold out a seeded random ``fraction`` of samples (for data sets without lonlat)."""
    order = np.random.default_rng(seed).permutation(len(data))
    n_test = max(1, round(len(data) * fraction))
    if n_test >= len(data):
        raise ValueError(f"too few samples ({len(data)}) to hold any out")
    return Split(
        train=order[n_test:],
        test=order[:n_test],
        description=f"random samples held out: {n_test} (seed {seed})",
    )
