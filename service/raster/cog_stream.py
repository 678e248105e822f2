"""Float COGs written while the rows come: tiles compressed and overviews averaged as they flush.

GDAL makes a COG from a finished file only: read back, overviews built, every
tile compressed again (4.5 s of a 4096 x 4096 footprints scene's 33 s, most of
it compressing the attention bands; see bench/scene_finish.md). Here each
block row of 512 rows is compressed (deflate by libdeflate, as GDAL does, with
the floating-point predictor; the tiles of one row on all usable CPUs) as soon
as the scene has blended it, and its 2 x 2 average feeds the next overview
level, which does the same in turn; each level's tiles go to a file of their
own. Finishing is left with writing the IFDs and appending the levels' tiles,
smallest overview first: file copies.

The averages are GDAL's: NaN (nodata) left out, in double precision, each
level from the one above it. Levels halve exactly, so the raster's sides must
be multiples of the coarsest overview's factor (:func:`can_stream`).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shutil
import struct
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

import deflate
import numpy as np
import rasterio
from affine import Affine

from service.raster.georef import Georeference
from service.raster.tiff_layout import SHORT, Level, Tag, header, read_tags
from service.runtime.cpus import usable_cpus

TILE = 512
# Tags copied from a one-pixel GeoTIFF GDAL writes with the same georeference
# and metadata: model pixel scale, tie point, transformation, GeoKeys and their
# parameters, GDAL's metadata (band descriptions and tags) and nodata.
GEO_TAGS = (33550, 33922, 34264, 34735, 34736, 34737, 42112, 42113)
NODATA_TAG = 42113
# Rows of a tile are averaged this many at a time (float64 temporaries stay small).
REDUCE_ROWS = 64

_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _encoder_pool() -> concurrent.futures.ThreadPoolExecutor:
    # libdeflate and numpy let go of the GIL: one row's tiles compress on every usable CPU.
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=usable_cpus(), thread_name_prefix="cog-encode"
            )
        return _pool


def can_stream(width: int, height: int, levels: int) -> bool:
    """Whether every overview of ``levels`` halves the one above it exactly."""
    step = 2**levels
    return bool(width % step == 0 and height % step == 0)


def encode_tile(tile: np.ndarray, level: int) -> bytearray:
    """A ``(rows, cols, bands)`` float32 tile as TIFF stores it: predictor 3, then deflate.

    The floating-point predictor (TIFF Technical Note 3): each row's bytes are
    split into planes, most significant byte first, and each byte becomes its
    difference with the same byte of the pixel before it.
    """
    rows, cols, bands = tile.shape
    values = np.ascontiguousarray(tile, dtype="<f4").view(np.uint8).reshape(rows, cols * bands, 4)
    # The thread's own buffers, used again for each tile: fresh ones of several MB
    # per tile left each thread's malloc arena holding more and more.
    planes = _scratch("planes", (rows, 4, cols * bands))
    np.copyto(planes, values[:, :, ::-1].transpose(0, 2, 1))
    flat = planes.reshape(rows, -1)
    diff = _scratch("diff", flat.shape)
    diff[:, :bands] = flat[:, :bands]
    np.subtract(flat[:, bands:], flat[:, :-bands], out=diff[:, bands:])
    return deflate.zlib_compress(diff.data, level)


_local = threading.local()


def _scratch(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A uint8 buffer of this thread's, kept for the next call of the same shape."""
    key = (name, shape)
    buffers: dict[tuple[str, tuple[int, ...]], np.ndarray] = _local.__dict__.setdefault("b", {})
    if key not in buffers:
        if len(buffers) > 8:  # outputs of other band counts: not kept forever
            buffers.clear()
        buffers[key] = np.empty(shape, np.uint8)
    return buffers[key]


def average_2x2(rows: np.ndarray) -> np.ndarray:
    """``(bands, 2h, 2w)`` float32 to ``(bands, h, w)``: each 2 x 2's mean of its non-NaN values.

    In double precision, summed in GDAL's order (row by row), then rounded.
    """
    bands, height, width = rows.shape
    out = np.empty((bands, height // 2, width // 2), np.float32)
    # Infinities of both signs average to NaN, as in GDAL.
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        for b in range(bands):
            for top in range(0, height, REDUCE_ROWS):
                part = rows[b, top : top + REDUCE_ROWS]
                corners = (part[0::2, 0::2], part[0::2, 1::2], part[1::2, 0::2], part[1::2, 1::2])
                target = out[b, top // 2 : (top + part.shape[0]) // 2]
                total = corners[0].astype(np.float64)
                if not np.isnan(part).any():
                    for corner in corners[1:]:
                        total += corner
                    np.multiply(total, 0.25, out=target, casting="same_kind")
                    continue
                count = (~np.isnan(corners[0])).astype(np.float64)
                np.nan_to_num(total, copy=False, nan=0.0, posinf=np.inf, neginf=-np.inf)
                for corner in corners[1:]:
                    valid = ~np.isnan(corner)
                    total += np.where(valid, corner, 0.0)
                    count += valid
                np.divide(total, count, out=target, casting="same_kind")
    return out


class _LevelFile:
    """One level's rows, buffered to whole block rows whose tiles go to a file of their own."""

    def __init__(self, path: Path, bands: int, width: int, height: int, level: int) -> None:
        self.path = path
        self.bands, self.width, self.height, self.level = bands, width, height, level
        self.cols = -(-width // TILE)
        self.buffer: np.ndarray | None = None  # allocated when rows first come
        self.filled = 0  # rows in the buffer
        self.received = 0  # rows received in all
        self.sizes: list[int] = []
        self.offsets: list[int] = []
        self.written = 0
        self.file: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed by finish or abort

    def add(self, rows: np.ndarray) -> list[np.ndarray]:
        """Take rows in order; return the block rows they complete (views, use before next add)."""
        done: list[np.ndarray] = []
        at = 0
        if self.buffer is None:
            self.buffer = np.empty((self.bands, TILE, self.width), np.float32)
        while at < rows.shape[1]:
            take = min(TILE - self.filled, rows.shape[1] - at)
            self.buffer[:, self.filled : self.filled + take] = rows[:, at : at + take]
            self.filled += take
            self.received += take
            at += take
            if self.filled == TILE or self.received == self.height:
                done.append(self.buffer[:, : self.filled])
                self.buffer = np.empty_like(self.buffer) if at < rows.shape[1] else self.buffer
                self.filled = 0
        return done

    def write_row(self, rows: np.ndarray, compress_level: int) -> None:
        """Compress one block row's tiles (left out where all NaN) and append them."""

        def encode(col: int) -> bytearray | None:
            # Each tile is cut out by the thread that compresses it: only the
            # tiles being compressed are held, not a copy of the whole row.
            part = rows[:, :, col * TILE : (col + 1) * TILE]
            if np.isnan(part).all():
                return None
            tile = _scratch("tile", (TILE, TILE, self.bands * 4)).view(np.float32)
            if part.shape[1:] != (TILE, TILE):
                tile.fill(np.nan)
            tile[: part.shape[1], : part.shape[2]] = part.transpose(1, 2, 0)
            return encode_tile(tile, compress_level)

        # In order, each written as soon as it is ready.
        for data in _encoder_pool().map(encode, range(self.cols)):
            if data is None:
                self.sizes.append(0)
                self.offsets.append(0)
                continue
            self.offsets.append(self.written)
            self.sizes.append(len(data))
            self.file.write(struct.pack("<I", len(data)))
            self.file.write(data)
            self.file.write(data[-4:])
            self.written += len(data) + 8

    def disk_bytes(self) -> int:
        with contextlib.suppress(OSError):
            return os.stat(self.path).st_blocks * 512
        return 0


class StreamedCog:
    """A float32 band stack, NaN for nodata, written in order of rows as a deflated COG.

    Args:
        path: where the COG goes.
        partial: the full-resolution tiles' file meanwhile (overview levels beside it).
        georef: the raster's georeference, copied exactly.
        descriptions: one per band.
        factors: overview factors (2, 4, ...), each twice the one before.
        level: deflate level, 1 to 9.
        band_tags: per-band metadata.
    """

    def __init__(
        self,
        path: Path,
        partial: Path,
        georef: Georeference,
        descriptions: Sequence[str],
        factors: list[int],
        level: int,
        band_tags: Sequence[Mapping[str, str]] = (),
    ) -> None:
        if not can_stream(georef.width, georef.height, len(factors)):
            raise ValueError("the raster's sides must be multiples of its coarsest overview factor")
        self.path, self.partial, self.georef, self.level = path, partial, georef, level
        self.descriptions = list(descriptions)
        self.band_tags = [dict(t) for t in band_tags]
        self.tags: dict[str, str] = {}
        bands = len(descriptions)
        self.levels = [_LevelFile(partial, bands, georef.width, georef.height, 0)]
        for i, factor in enumerate(factors, start=1):
            level_path = Path(f"{partial}.ovr{i}.part")
            size = (georef.width // factor, georef.height // factor)
            self.levels.append(_LevelFile(level_path, bands, *size, i))

        # Block rows of full resolution being filled: their values, and the
        # pixels written into them so far.
        self._open: dict[int, tuple[np.ndarray, list[int]]] = {}
        self._next = 0  # the next block row to compress
        self._spare: np.ndarray | None = None
        self._block_rows = -(-georef.height // TILE)

    def write(self, first_row: int, values: np.ndarray, first_col: int = 0) -> None:
        """Take ``(bands, rows, columns)`` values (NaN: nodata) from ``first_row, first_col``.

        Windows must not overlap. A block row is compressed once all its pixels
        came, in order of rows; pixels never written are nodata.
        """
        _, n, w = values.shape
        if first_row < self._next * TILE:
            raise ValueError(f"row {first_row} comes after its block row was written")
        for index in range(first_row // TILE, (first_row + n - 1) // TILE + 1):
            top = index * TILE
            lo, hi = max(first_row, top), min(first_row + n, top + TILE)
            block, written = self._block(index)
            part = values[:, lo - first_row : hi - first_row]
            block[:, lo - top : hi - top, first_col : first_col + w] = part
            written[0] += (hi - lo) * w
        while self._next in self._open:
            block, written = self._open[self._next]
            if written[0] < block.shape[1] * block.shape[2]:
                break
            self._flush_next()

    def _block(self, index: int) -> tuple[np.ndarray, list[int]]:
        if index not in self._open:
            rows = min(TILE, self.georef.height - index * TILE)
            shape = (len(self.descriptions), rows, self.georef.width)
            # The last block row written is used again (a block row is tens of MB).
            spare, self._spare = self._spare, None
            block = (
                spare if spare is not None and spare.shape == shape else np.empty(shape, np.float32)
            )
            block.fill(np.nan)
            self._open[index] = (block, [0])
        return self._open[index]

    def _flush_next(self) -> None:
        block, _ = self._block(self._next)
        del self._open[self._next]
        self._next += 1
        self.levels[0].write_row(block, self.level)
        if len(self.levels) > 1:
            self._push(1, average_2x2(block))
        self._spare = block

    def _push(self, index: int, rows: np.ndarray) -> None:
        level = self.levels[index]
        for block in level.add(rows):
            level.write_row(block, self.level)
            if index + 1 < len(self.levels):
                self._push(index + 1, average_2x2(block))

    def update_tags(self, **tags: str) -> None:
        """Dataset-level metadata."""
        self.tags.update(tags)

    def disk_bytes(self) -> int:
        """Disk the unfinished levels and COG take now."""
        total = sum(level.disk_bytes() for level in self.levels)
        with contextlib.suppress(OSError):
            total += os.stat(self.path.with_suffix(".cog.tmp")).st_blocks * 512
        return total

    def finish(self) -> Path:
        """Write the IFDs and every level's tiles into the COG; return its path."""
        while self._next < self._block_rows:
            self._flush_next()
        for level in self.levels:
            level.file.close()
        geo = self._geo_tags()
        nodata = [t for t in geo if t.tag == NODATA_TAG]
        levels = [
            Level(
                self._image_tags(lf, geo if i == 0 else nodata, overview=i > 0),
                lf.sizes,
                lf.offsets,
                lf.written,
            )
            for i, lf in enumerate(self.levels)
        ]
        head, data_at = header(levels)
        tmp = self.path.with_suffix(".cog.tmp")
        try:
            with open(tmp, "wb") as out:
                out.write(head)
                for i in reversed(range(len(levels))):
                    if out.tell() != data_at[i]:
                        raise AssertionError("COG layout miscounted")
                    with open(self.levels[i].path, "rb") as src:
                        shutil.copyfileobj(src, out, 16 * 2**20)
            tmp.replace(self.path)
        finally:
            self.remove_temporaries()
        return self.path

    def abort(self) -> None:
        """Drop everything written."""
        for level in self.levels:
            level.file.close()
        self.remove_temporaries()
        self.path.unlink(missing_ok=True)

    def remove_temporaries(self) -> None:
        """The levels' files and the unfinished COG."""
        for level in self.levels:
            level.path.unlink(missing_ok=True)
        self.path.with_suffix(".cog.tmp").unlink(missing_ok=True)

    def _geo_tags(self) -> list[Tag]:
        # GDAL writes the georeference and metadata tags; one pixel is enough.
        g = self.georef
        template = Path(f"{self.partial}.geo.part")
        profile = {
            "driver": "GTiff",
            "width": 1,
            "height": 1,
            "count": len(self.descriptions),
            "dtype": "float32",
            "nodata": float("nan"),
            "crs": rasterio.crs.CRS.from_wkt(g.crs) if g.crs else None,
            "transform": Affine(*g.transform),
        }
        try:
            with rasterio.open(template, "w", **profile) as dst:
                for i, desc in enumerate(self.descriptions, start=1):
                    dst.set_band_description(i, desc)
                for i, tags in enumerate(self.band_tags, start=1):
                    dst.update_tags(i, **tags)
                if self.tags:
                    dst.update_tags(**self.tags)
            return [t for t in read_tags(template) if t.tag in GEO_TAGS]
        finally:
            template.unlink(missing_ok=True)

    def _image_tags(self, lf: _LevelFile, extra: list[Tag], overview: bool) -> list[Tag]:
        bands = lf.bands
        side = SHORT if max(lf.width, lf.height) < 2**16 else 4
        tags = [
            Tag.of(256, side, [lf.width]),
            Tag.of(257, side, [lf.height]),
            Tag.of(258, SHORT, [32] * bands),
            Tag.of(259, SHORT, [8]),  # deflate
            Tag.of(262, SHORT, [1]),  # min is black
            Tag.of(277, SHORT, [bands]),
            Tag.of(284, SHORT, [1]),  # pixel-interleaved
            Tag.of(317, SHORT, [3]),  # floating-point predictor
            Tag.of(322, SHORT, [TILE]),
            Tag.of(323, SHORT, [TILE]),
            Tag.of(339, SHORT, [3] * bands),  # IEEE float
        ]
        if bands > 1:
            tags.append(Tag.of(338, SHORT, [0] * (bands - 1)))  # extra samples: unspecified
        if overview:
            tags.append(Tag.of(254, 4, [1]))  # reduced-resolution image
        return sorted([*tags, *extra], key=lambda t: t.tag)
