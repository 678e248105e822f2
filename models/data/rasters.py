"""Read training imagery and building masks from rasters: GeoTIFF, PNG or JPEG.

rasterio (GDAL) reads all three, so one reader serves georeferenced scenes and
plain photos alike. A mask marks buildings either by a value (``--mask-value
255`` on a one-band mask) or by a colour (``--mask-color '#3C1098'`` on an RGB
class map such as the Dubai set's).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
_HEX = re.compile(r"^#?([0-9a-fA-F]{6})$")


class RasterDataError(ValueError):
    """A training image or mask cannot be read or does not fit its partner."""


@dataclass(frozen=True)
class MaskRule:
    """Which mask pixels are buildings: those equal to ``value``, or of colour ``color``."""

    value: float | None = None
    color: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        if (self.value is None) == (self.color is None):
            raise RasterDataError("a mask needs exactly one of a building value or colour")

    def apply(self, mask: np.ndarray, name: str) -> np.ndarray:
        """``(H, W)`` uint8, 1 on buildings, from a mask raster ``(K, H, W)``."""
        if self.color is not None:
            if mask.shape[0] < 3:
                raise RasterDataError(
                    f"{name} has {mask.shape[0]} band(s); a mask colour needs an RGB mask "
                    "(give --mask-value for a one-band mask)"
                )
            rgb = np.asarray(self.color, dtype=mask.dtype)[:, None, None]
            return np.all(mask[:3] == rgb, axis=0).astype(np.uint8)
        if mask.shape[0] != 1:
            raise RasterDataError(
                f"{name} has {mask.shape[0]} bands; a mask value needs a one-band mask "
                "(give --mask-color for an RGB class map)"
            )
        return (mask[0] == self.value).astype(np.uint8)


def parse_colour(text: str) -> tuple[int, int, int]:
    """``'#3C1098'`` (or ``3C1098``, or ``60,16,152``) -> ``(60, 16, 152)``."""
    match = _HEX.match(text.strip())
    if match:
        h = match.group(1)
        return int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16)
    parts = text.split(",")
    if len(parts) == 3 and all(p.strip().isdigit() and int(p) <= 255 for p in parts):
        r, g, b = (int(p) for p in parts)
        return r, g, b
    raise RasterDataError(f"mask colour {text!r} is neither '#RRGGBB' nor 'R,G,B'")


def _read(path: Path) -> tuple[np.ndarray, float | None]:
    """All bands of a raster ``(K, H, W)`` and its pixel size in metres (None: unknown)."""
    try:
        with warnings.catch_warnings():
            # PNG and JPEG have no georeference; that is expected here.
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                data = src.read()
                gsd = None
                if src.crs is not None and src.crs.is_projected:
                    units = (src.crs.linear_units or "").lower()
                    if units in ("metre", "meter", "m"):
                        gsd = float(abs(src.transform.a))
    except RasterioIOError as exc:
        raise RasterDataError(f"{path.name} cannot be read as a raster: {exc}") from exc
    return data, gsd


def read_image(path: Path) -> tuple[np.ndarray, float | None]:
    """An image ``(C, H, W)`` in its own dtype and its pixel size in metres (if known).

    Raises:
        RasterDataError: unreadable, or of a dtype other than uint8 / uint16.
    """
    image, gsd = _read(path)
    if image.dtype not in (np.uint8, np.uint16):
        raise RasterDataError(f"{path.name} is {image.dtype}; training takes uint8 or uint16")
    return image, gsd


def _palette_to_rgb(path: Path, raw: np.ndarray) -> np.ndarray:
    """A one-band palette raster ``(1, H, W)`` as the RGB colours it shows ``(3, H, W)``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            if src.count != 1 or src.colorinterp[0] != ColorInterp.palette:
                return raw
            colormap = src.colormap(1)
    lut = np.zeros((256, 3), dtype=np.uint8)
    for index, rgba in colormap.items():
        if 0 <= index < 256:
            lut[index] = rgba[:3]
    return np.moveaxis(lut[raw[0]], -1, 0)


def _mask_raw(path: Path, colour: bool, shape: tuple[int, int]) -> np.ndarray:
    """A mask raster ``(K, H, W)`` that must be ``shape``, palette masks as RGB when by colour."""
    raw, _ = _read(path)
    if colour and raw.shape[0] == 1 and raw.dtype == np.uint8:
        raw = _palette_to_rgb(path, raw)
    if raw.shape[1:] != shape:
        raise RasterDataError(
            f"mask {path.name} is {raw.shape[2]}x{raw.shape[1]}, its image "
            f"{shape[1]}x{shape[0]}; they must match pixel for pixel"
        )
    return raw


def read_mask(path: Path, rule: MaskRule, shape: tuple[int, int]) -> np.ndarray:
    """A building mask ``(H, W)`` uint8 (1 = building) that must be ``shape``.

    A palette mask (one band of indices plus a colour table, as some PNG class
    maps are saved) is matched by colour through its table, like an RGB mask.
    """
    return rule.apply(_mask_raw(path, rule.color is not None, shape), path.name)


def read_masks(
    path: Path, rule: MaskRule, shape: tuple[int, int], others: Sequence[MaskRule]
) -> tuple[np.ndarray, np.ndarray]:
    """The building mask and a map of other classes, from one class-map raster.

    Args:
        others: the rules of other classes (land, road, water...), in order.

    Returns:
        ``(mask, classes)``: the building mask as :func:`read_mask`; ``classes``
        ``(H, W)`` uint8, ``k`` where ``others[k - 1]`` matches (the first that
        does) and 0 where none does (buildings, unlabelled pixels).
    """
    raw = _mask_raw(path, rule.color is not None or any(o.color for o in others), shape)
    classes = np.zeros(shape, dtype=np.uint8)
    for k, other in reversed(list(enumerate(others, start=1))):
        classes[other.apply(raw, path.name) == 1] = k
    return rule.apply(raw, path.name), classes
