"""Gather real footprint training data: image + mask pairs, folders of them, negatives.

Every image belongs to a *group*, the unit validation holds out whole: in a
folder laid out as ``<group>/images`` + ``<group>/masks`` (the Dubai set's
``Tile N``) the group is that folder's name; elsewhere each image is its own
group. Holding out whole groups keeps crops of one scene from landing on both
sides of the split.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models.data.rasters import (
    IMAGE_SUFFIXES,
    MaskRule,
    RasterDataError,
    read_image,
    read_mask,
    read_masks,
)

IMAGE_DIRS = ("images", "image", "imgs")
MASK_DIRS = ("masks", "mask", "labels", "gt")


@dataclass(frozen=True)
class LabelledImage:
    """One training image with its building mask.

    Attributes:
        image: ``(C, H, W)`` uint8 or uint16 raw values.
        mask: ``(H, W)`` uint8, 1 on buildings (all 0 for a negative).
        group: the hold-out unit it belongs to.
        name: a short name for messages and metrics.
        negative: True for an image known to hold no buildings.
        gsd_m: metres per pixel when the file says so, else None.
        classes: ``(H, W)`` uint8 map of other classes (1..K, 0: none of them)
            for the auxiliary task; None: not known (negatives, GeoJSON labels).
    """

    image: np.ndarray
    mask: np.ndarray
    group: str
    name: str
    negative: bool = False
    gsd_m: float | None = None
    classes: np.ndarray | None = None


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def _find_dir(parent: Path, names: Iterable[str]) -> Path | None:
    for child in sorted(parent.iterdir()):
        if child.is_dir() and child.name.lower() in names:
            return child
    return None


def load_pair(
    image_path: Path,
    mask_path: Path,
    rule: MaskRule,
    group: str,
    others: Sequence[MaskRule] = (),
) -> LabelledImage:
    """Read one image and its mask raster (and the mask's other classes, if named)."""
    image, gsd = read_image(image_path)
    if not others:
        mask = read_mask(mask_path, rule, image.shape[1:])
        return LabelledImage(image, mask, group, image_path.stem, gsd_m=gsd)
    mask, classes = read_masks(mask_path, rule, image.shape[1:], others)
    return LabelledImage(image, mask, group, image_path.stem, gsd_m=gsd, classes=classes)


def pair_folder(root: Path) -> list[tuple[Path, Path, str]]:
    """``(image, mask, group)`` of every pair under ``root``, matched by file stem.

    ``root`` holds ``images/`` + ``masks/`` (each image its own group), or
    subfolders that do (each subfolder one group, e.g. ``Tile 1/images``).

    Raises:
        RasterDataError: no pairs, or an image without a mask.
    """
    if not root.is_dir():
        raise RasterDataError(f"{root} is not a folder")
    layouts: list[tuple[Path, str | None]] = [(root, None)]
    layouts += [(d, d.name) for d in sorted(root.iterdir()) if d.is_dir()]
    pairs: list[tuple[Path, Path, str]] = []
    for folder, group in layouts:
        images_dir = _find_dir(folder, IMAGE_DIRS)
        masks_dir = _find_dir(folder, MASK_DIRS)
        if images_dir is None or masks_dir is None:
            continue
        masks = {p.stem: p for p in _images_in(masks_dir)}
        for image in _images_in(images_dir):
            mask = masks.get(image.stem)
            if mask is None:
                raise RasterDataError(
                    f"{image.relative_to(root)} has no mask of the same name in "
                    f"{masks_dir.relative_to(root) if masks_dir != root else '.'}"
                )
            pairs.append((image, mask, group or image.stem))
    if not pairs:
        raise RasterDataError(
            f"{root} holds no image/mask pairs: expected images/ and masks/ folders "
            "(or subfolders that hold them) with files of matching names"
        )
    return pairs


def load_negatives(paths: Sequence[Path]) -> list[LabelledImage]:
    """Images without buildings, from files or folders (searched recursively)."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise RasterDataError(f"negatives folder {path} holds no images")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise RasterDataError(f"negatives {path} does not exist")
    out = []
    for f in files:
        image, gsd = read_image(f)
        mask = np.zeros(image.shape[1:], dtype=np.uint8)
        out.append(LabelledImage(image, mask, f.stem, f.stem, negative=True, gsd_m=gsd))
    return out


def split_groups(
    items: Sequence[LabelledImage], holdout: Sequence[str] | None, fraction: float = 0.2
) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """Split into (train, held-out) by whole groups.

    Args:
        items: every labelled image.
        holdout: group names to hold out; None: the last ``fraction`` of the
            groups with buildings, in name order (at least one).

    Raises:
        RasterDataError: a named group does not exist, or nothing is left to train on.
    """
    groups = sorted({i.group for i in items})
    if holdout is None:
        positive = sorted({i.group for i in items if not i.negative})
        n = max(1, round(fraction * len(positive)))
        chosen = set(positive[-n:]) if len(positive) > 1 else set()
    else:
        unknown = [g for g in holdout if g not in groups]
        if unknown:
            raise RasterDataError(
                f"held-out group(s) {', '.join(map(repr, unknown))} not found; "
                f"groups are {', '.join(map(repr, groups))}"
            )
        chosen = set(holdout)
    train = [i for i in items if i.group not in chosen]
    held = [i for i in items if i.group in chosen]
    if not any(not i.negative for i in train):
        raise RasterDataError("no image with buildings is left to train on")
    return train, held
