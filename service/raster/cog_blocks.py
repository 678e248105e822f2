"""One level of a streamed COG, tile by tile: rows parked on disk until their tile is whole.

Rows come in windows (a row group's 512 columns at a time, or any rectangle).
Each window's pixels are written at once into a scratch file, at their place in
the slot of the 512 x 512 tile they fall in; a tile whose pixels have all come
is read back, compressed and, with every tile before it in row-major order,
appended to the level's file, and its slot is given to the next tile. RAM then
holds a window and a few tiles, however wide the raster: the rows still being
filled wait in the scratch file (the page cache, not the process's memory).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import struct
import threading
from pathlib import Path
from typing import BinaryIO

import deflate
import numpy as np

from service.runtime.cpus import usable_cpus

try:
    # Intel's ISA-L: its deflate level 1 compresses these tiles 2.5-4x faster than
    # libdeflate's level 1, to within 0-3% of the size (wheels for x86-64 and Arm).
    from isal import isal_zlib
except ImportError:  # pragma: no cover - platforms without its wheels
    isal_zlib = None  # type: ignore[assignment]

TILE = 512
# Rows of a tile are averaged this many at a time (float64 temporaries stay small).
REDUCE_ROWS = 64

_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def encoder_pool() -> concurrent.futures.ThreadPoolExecutor:
    """Threads that compress tiles: ISA-L, libdeflate and numpy let go of the GIL."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=usable_cpus(), thread_name_prefix="cog-encode"
            )
        return _pool


def zlib_deflate(data: memoryview, level: int) -> bytes | bytearray:
    """``data`` as a zlib stream (what a TIFF deflate tile holds), at ``level`` (1 to 9).

    Level 1, the fastest, is ISA-L's level 1 where it is installed; other
    levels are libdeflate's, as GDAL's own.
    """
    if level == 1 and isal_zlib is not None:
        return isal_zlib.compress(data, 1)
    return deflate.zlib_compress(data, level)


def encode_tile(tile: np.ndarray, level: int) -> bytes | bytearray:
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
    return zlib_deflate(diff.data, level)


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


# What compressing one tile gives: its bytes (None: all nodata) and its 2 x 2
# average (None where no level below wants it).
Encoded = tuple[bytes | bytearray | None, np.ndarray | None]


class BlockLevel:
    """One level's tiles: pixels parked in a scratch file, tiles appended whole, in order.

    Args:
        path: the level's tiles (each with its byte count before it and its
            last 4 bytes after it, as a COG holds them); the scratch file is
            ``path`` + ``.rows.part``.
        bands, width, height: the level's raster.
        level: deflate level.
    """

    def __init__(self, path: Path, bands: int, width: int, height: int, level: int) -> None:
        self.path, self.scratch = path, Path(f"{path}.rows.part")
        self.bands, self.width, self.height, self.level = bands, width, height, level
        self.cols = -(-width // TILE)
        self.tiles = self.cols * -(-height // TILE)
        self.sizes: list[int] = []
        self.offsets: list[int] = []
        self.written = 0
        # Tiles not appended yet: pixels come (nodata too), and for those with
        # data, their scratch slot and the rectangles stored there (rows then
        # columns, in the tile).
        self._slots: dict[int, int] = {}
        self._free: list[int] = []
        self._rects: dict[int, list[tuple[int, int, int, int]]] = {}
        self._count: dict[int, int] = {}
        self.next = 0  # the next tile to append, row-major
        self.file: BinaryIO = open(path, "wb")  # noqa: SIM115 - closed by close()
        self._fd = os.open(self.scratch, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self._slot_bytes = TILE * TILE * bands * 4

    def _shape(self, index: int) -> tuple[int, int]:
        row, col = divmod(index, self.cols)
        return min(TILE, self.height - row * TILE), min(TILE, self.width - col * TILE)

    def put(self, first_row: int, first_col: int, values: np.ndarray) -> None:
        """Park ``(bands, rows, columns)`` values at their place; windows must not overlap."""
        _, n, w = values.shape
        if n == 0 or w == 0:
            return
        if first_row // TILE * self.cols + first_col // TILE < self.next:
            raise ValueError(f"row {first_row} comes after its block row was written")
        for trow in range(first_row // TILE, (first_row + n - 1) // TILE + 1):
            r0, r1 = max(first_row, trow * TILE), min(first_row + n, (trow + 1) * TILE)
            for tcol in range(first_col // TILE, (first_col + w - 1) // TILE + 1):
                c0, c1 = max(first_col, tcol * TILE), min(first_col + w, (tcol + 1) * TILE)
                index = trow * self.cols + tcol
                if index < self.next:
                    raise ValueError(f"row {first_row} comes after its block row was written")
                part = values[:, r0 - first_row : r1 - first_row, c0 - first_col : c1 - first_col]
                self._park(index, r0 - trow * TILE, c0 - tcol * TILE, part)

    def _park(self, index: int, top: int, left: int, part: np.ndarray) -> None:
        _, n, w = part.shape
        self._count[index] = self._count.get(index, 0) + n * w
        if self._count[index] > np.prod(self._shape(index)):
            raise ValueError(f"windows overlap in the tile at row {top}, column {left}")
        if np.isnan(part).all():
            return  # nodata is what a tile starts as: counted, not stored
        slot = self._slots.get(index)
        if slot is None:
            slot = self._free.pop() if self._free else len(self._slots)
            self._slots[index], self._rects[index] = slot, []
        pixels = np.ascontiguousarray(part.transpose(1, 2, 0), dtype=np.float32)
        at = slot * self._slot_bytes + (top * TILE + left) * self.bands * 4
        if w == TILE:
            os.pwrite(self._fd, pixels.data, at)
        else:
            row_bytes = TILE * self.bands * 4
            for r in range(n):
                os.pwrite(self._fd, pixels[r].data, at + r * row_bytes)
        self._rects[index].append((top, top + n, left, left + w))

    def ready(self, everything: bool = False) -> int:
        """Tiles from :attr:`next` on whose pixels have all come (``everything``: all left)."""
        if everything:
            return self.tiles - self.next
        run = self.next
        while run < self.tiles and self._count.get(run, -1) == np.prod(self._shape(run)):
            run += 1
        return run - self.next

    def encode(self, index: int, average: bool) -> Encoded:
        """Read a tile back, compress it and average it (in a pool thread)."""
        rows, cols = self._shape(index)
        tile = _scratch("tile", (TILE, TILE, self.bands * 4)).view(np.float32)
        slot = self._slots.get(index)
        if slot is None:
            tile.fill(np.nan)  # no pixel came: nodata
        else:
            os.preadv(self._fd, [tile.data], slot * self._slot_bytes)
            rects = self._rects[index]
            if sum((r1 - r0) * (c1 - c0) for r0, r1, c0, c1 in rects) < rows * cols:
                # Pixels not stored (nodata, never written, or what the slot's
                # last tile left there).
                stored = np.zeros((TILE, TILE), bool)
                for r0, r1, c0, c1 in rects:
                    stored[r0:r1, c0:c1] = True
                tile[~stored] = np.nan
        tile[rows:] = np.nan
        tile[:, cols:] = np.nan
        data = None if np.isnan(tile).all() else encode_tile(tile, self.level)
        reduced = average_2x2(tile[:rows, :cols].transpose(2, 0, 1)) if average else None
        return data, reduced

    def append(self, index: int, data: bytes | bytearray | None) -> None:
        """Write tile ``index`` (the next one) and give its slot to the next tile."""
        if index != self.next:
            raise AssertionError("tiles appended out of order")
        self.next += 1
        self._count.pop(index, None)
        slot = self._slots.pop(index, None)
        if slot is not None:
            self._free.append(slot)
            del self._rects[index]
            if not self._slots:  # nothing parked: the scratch file's disk is given back
                os.ftruncate(self._fd, 0)
                self._free.clear()
        if data is None:
            self.sizes.append(0)
            self.offsets.append(0)
            return
        self.offsets.append(self.written)
        self.sizes.append(len(data))
        self.file.write(struct.pack("<I", len(data)))
        self.file.write(data)
        self.file.write(data[-4:])
        self.written += len(data) + 8

    def held(self) -> int:
        """Tiles parked in the scratch file now."""
        return len(self._slots)

    def close(self) -> None:
        """Close both files and delete the scratch file (the tiles' file is the caller's)."""
        self.file.close()
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self.scratch.unlink(missing_ok=True)

    def disk_bytes(self) -> int:
        """Disk the tiles' and scratch files take."""
        total = 0
        for path in (self.path, self.scratch):
            with contextlib.suppress(OSError):
                total += os.stat(path).st_blocks * 512
        return total
