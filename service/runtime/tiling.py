"""Tiling a large scene and blending overlapping tile outputs with a 2-D Hann weight.

Numpy only: the scene pipeline reads windows with rasterio and feeds them here,
and benchmarks can drive it without any raster I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

# The Hann window is zero at its ends; a floor keeps every covered pixel's
# weight positive so that a pixel seen by one tile only is still defined.
WEIGHT_FLOOR = 1e-3


def tiling_problem(size: int, overlap: int) -> str | None:
    """Why tiles of ``size`` pixels cannot overlap by ``overlap``, or None when they can."""
    if size <= 0 or not 0 <= overlap < size:
        return "tile_size must be positive and overlap smaller than it"
    if 2 * overlap > size:
        return "overlap may be at most half of tile_size"
    return None


@dataclass(frozen=True)
class Tile:
    """One tile: its row and column in the grid and its output window in scene pixels.

    A tile lies inside the scene unless the scene is smaller than a tile; the
    model sees ``halo`` more pixels of context around it (see :meth:`context`),
    which are cropped away.
    """

    row: int
    col: int
    y: int
    x: int
    size: int
    halo: int = 0

    def context(self, height: int, width: int) -> tuple[Tile, int, int]:
        """The window the model reads, and where this tile lies inside it.

        The window is the tile grown by its halo, shifted inward where it would
        leave the scene, so that the model sees real pixels as context and meets
        the scene's edges exactly as whole-image inference does. Only a scene
        smaller than the window needs padding (reflected, on the far side).

        Returns:
            ``(window, dy, dx)``: the window as a tile, and the offset of this
            tile's output inside the window's output.
        """
        size = self.size + 2 * self.halo
        y = min(max(0, self.y - self.halo), max(0, height - size))
        x = min(max(0, self.x - self.halo), max(0, width - size))
        return Tile(self.row, self.col, y, x, size), self.y - y, self.x - x


@dataclass(frozen=True)
class TileGrid:
    """Tiles of ``size`` overlapping by ``overlap`` over a ``height x width`` scene.

    The first tile starts at the scene's edge and the last is snapped to end at
    the far edge, so no output comes from beyond the scene. ``halo`` extra pixels
    of real context around each tile are read and cropped away: near tile
    edges, convolutional models then see enough context that tiled and
    whole-image inference agree.
    """

    height: int
    width: int
    size: int
    overlap: int
    halo: int = 0

    def __post_init__(self) -> None:
        problem = tiling_problem(self.size, self.overlap)
        if problem:
            raise ValueError(problem)

    @property
    def stride(self) -> int:
        """Distance between tile origins."""
        return self.size - self.overlap

    def _count(self, extent: int) -> int:
        return max(1, math.ceil(max(0, extent - self.size) / self.stride) + 1)

    @property
    def rows(self) -> int:
        """Tile rows."""
        return self._count(self.height)

    @property
    def cols(self) -> int:
        """Tile columns."""
        return self._count(self.width)

    def __len__(self) -> int:
        return self.rows * self.cols

    def _origin(self, index: int, count: int, extent: int) -> int:
        if index == count - 1 and count > 1:
            return extent - self.size  # snapped to the far edge
        return index * self.stride

    def row_tiles(self, row: int) -> list[Tile]:
        """The tiles of one grid row, left to right."""
        y = self._origin(row, self.rows, self.height)
        return [
            Tile(row, col, y, self._origin(col, self.cols, self.width), self.size, self.halo)
            for col in range(self.cols)
        ]

    def __iter__(self) -> Iterator[Tile]:
        for row in range(self.rows):
            yield from self.row_tiles(row)

    def row_groups(self) -> list[range]:
        """Grid rows blended together: each row alone, bar a snapped last row.

        The last row, snapped to the far edge, can overlap the one before by up
        to a tile less a pixel: the two are blended together, column by column,
        so that no row ever leaves more than ``overlap`` scene rows to the next.
        """
        groups = [range(row, row + 1) for row in range(self.rows)]
        last = self.rows - 1
        if last > 0:
            y0 = self._origin(last - 1, self.rows, self.height)
            if y0 + self.size - self._origin(last, self.rows, self.height) > self.overlap:
                groups[-2:] = [range(last - 1, last + 1)]
        return groups

    def blend_order(self, rows: range | None = None, cols: range | None = None) -> list[list[Tile]]:
        """Tiles as they are blended: row group by row group, column by column in a group.

        ``rows`` and ``cols`` keep only those tiles (groups cut to ``rows``).
        """
        rows = rows if rows is not None else range(self.rows)
        cols = cols if cols is not None else range(self.cols)
        order: list[list[Tile]] = []
        for group in self.row_groups():
            kept = [r for r in group if r in rows]
            if not kept:
                continue
            tiles = [self.row_tiles(r)[cols.start : cols.stop] for r in kept]
            order.append([t for column in zip(*tiles, strict=True) for t in column])
        return order

    def block_rows(self, row: int) -> tuple[int, int]:
        """Scene rows final once grid rows up to ``row`` are blended: ``[start, stop)``."""
        start = 0 if row == 0 else self._origin(row, self.rows, self.height)
        stop = (
            self.height if row == self.rows - 1 else self._origin(row + 1, self.rows, self.height)
        )
        return max(0, start), min(self.height, stop)


def hann_weight(size: int) -> np.ndarray:
    """``(size, size)`` float32 2-D Hann (raised cosine) weight, floored above zero.

    The floor is applied to each 1-D ramp, not to their product, so that along a
    scene edge (where every covering tile is near its own edge) the weights still
    favour the tile whose centre is nearest.
    """
    if size == 1:
        return np.ones((1, 1), dtype=np.float32)
    ramp = 0.5 - 0.5 * np.cos(2 * np.pi * (np.arange(size) + 0.5) / size)
    ramp = np.maximum(ramp, WEIGHT_FLOOR)
    return np.outer(ramp, ramp).astype(np.float32)


def read_bounds(tile: Tile, height: int, width: int) -> tuple[int, int, int, int]:
    """The part of a tile inside the scene: ``(y0, y1, x0, x1)`` in scene pixels."""
    return (
        max(0, tile.y),
        min(height, tile.y + tile.size),
        max(0, tile.x),
        min(width, tile.x + tile.size),
    )


def reflect_pad(data: np.ndarray, tile: Tile, height: int, width: int) -> np.ndarray:
    """Pad ``(C, h, w)`` read from inside the scene to the tile's full size by reflection."""
    y0, y1, x0, x1 = read_bounds(tile, height, width)
    top, left = y0 - tile.y, x0 - tile.x
    bottom, right = tile.size - top - (y1 - y0), tile.size - left - (x1 - x0)
    if top == bottom == left == right == 0:
        return data
    pads = ((0, 0), (top, bottom), (left, right))
    # Reflection cannot reach further than the data is long; tiny scenes repeat
    # edges instead.
    if max(top, bottom) < data.shape[1] and max(left, right) < data.shape[2]:
        return np.pad(data, pads, mode="reflect")
    return np.pad(data, pads, mode="symmetric" if min(data.shape[1:]) > 0 else "edge")


def add_weighted(
    acc: np.ndarray,
    wsum: np.ndarray,
    top: int,
    tile: Tile,
    outputs: np.ndarray,
    weight: np.ndarray,
    grid: TileGrid,
    left: int = 0,
) -> None:
    """Add a tile's ``(layers, size, size)`` outputs times ``weight`` into buffers.

    ``acc`` ``(layers, rows, columns)`` and ``wsum`` ``(rows, columns)`` hold
    scene pixels from row ``top`` and column ``left`` on; only the part of the
    tile inside the scene and the buffers is added.
    """
    y0, y1, x0, x1 = read_bounds(tile, grid.height, grid.width)
    y0, y1 = max(y0, top), min(y1, top + wsum.shape[0])
    x0, x1 = max(x0, left), min(x1, left + wsum.shape[1])
    if y1 <= y0 or x1 <= x0:
        return
    ty, tx = y0 - tile.y, x0 - tile.x
    h, w = y1 - y0, x1 - x0
    part = weight[ty : ty + h, tx : tx + w]
    rows, cols = slice(y0 - top, y1 - top), slice(x0 - left, x1 - left)
    acc[:, rows, cols] += outputs[:, ty : ty + h, tx : tx + w] * part
    wsum[rows, cols] += part


# Width of the column windows blended rows are handed out in: the output files'
# block width, so that each window fills whole file blocks across.
WINDOW_COLUMNS = 512

BlendedWindow = tuple[int, int, np.ndarray]
"""A final window of blended rows: ``(first row, first column, (layers, rows, columns))``."""


class StripBlender:
    """Blends tile outputs window by window, so that no buffer spans the scene's width.

    Tiles come in :meth:`TileGrid.blend_order`: a row group's tiles column by
    column. A group's sums are kept in column windows of ``columns`` pixels;
    once a tile column of the group is added, the windows left of the next
    tile column are final: their group rows are divided out and handed out by
    :meth:`pop_final`, and the rows the next group's tiles still reach (at
    most ``overlap``) are kept for it. Memory is then a few tiles' worth plus
    ``overlap`` rows of sums across the scene, however wide it is. Each pixel
    gets its tiles' weighted outputs in the order a whole-row blend adds them,
    but in a snapped last row group, where tiles come column by column.

    Args:
        grid: the tile grid.
        layers: number of output bands blended (predictions and attention).
        columns: width of the windows handed out (the last may be narrower).
    """

    def __init__(self, grid: TileGrid, layers: int, columns: int = WINDOW_COLUMNS) -> None:
        self.grid = grid
        self.layers = layers
        self.columns = columns
        self.weight = hann_weight(grid.size)
        self._groups = grid.row_groups()
        self._order = iter([t for group in grid.blend_order() for t in group])
        self._group = 0
        self._windows = -(-grid.width // columns)
        self._next_window = 0
        # Window index -> sums over the current group's rows.
        self._open: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        # Window index -> sums of the rows the next group shares with this one.
        self._seam: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        # Final sums not divided out yet: (first row, first column, acc, wsum).
        self._final: list[tuple[int, int, np.ndarray, np.ndarray]] = []

    def _rows(self) -> tuple[int, int, int]:
        """The current group's scene rows: first, one past the last final, one past the last."""
        group, g = self._groups[self._group], self.grid
        top = g.block_rows(group.start)[0]
        stop = g.block_rows(group.stop - 1)[1]
        bottom = min(g.height, g.row_tiles(group.stop - 1)[0].y + g.size)
        return top, stop, bottom

    def _window(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """A window's sums over the group's rows, begun from what the group above left."""
        got = self._open.get(index)
        if got is None:
            top, _, bottom = self._rows()
            width = min(self.columns, self.grid.width - index * self.columns)
            acc = np.zeros((self.layers, bottom - top, width), np.float32)
            wsum = np.zeros((bottom - top, width), np.float32)
            seam = self._seam.pop(index, None)
            if seam is not None:
                rows = seam[1].shape[0]
                acc[:, :rows] = seam[0]
                wsum[:rows] = seam[1]
            got = self._open[index] = acc, wsum
        return got

    def _close(self, index: int) -> None:
        """Set a window's final rows aside and keep the rows the next group shares."""
        acc, wsum = self._window(index)
        del self._open[index]
        top, stop, _ = self._rows()
        n = stop - top
        if wsum.shape[0] > n:
            self._seam[index] = acc[:, n:].copy(), wsum[n:].copy()
        self._final.append((top, index * self.columns, acc[:, :n], wsum[:n]))

    def add(self, tile: Tile, outputs: np.ndarray | None) -> None:
        """Add the next tile's ``(layers, size, size)`` outputs (None: skipped, no data)."""
        expected = next(self._order, None)
        if expected is None or (expected.row, expected.col) != (tile.row, tile.col):
            raise RuntimeError("tiles must be added in the grid's blend order")
        g = self.grid
        if outputs is not None:
            top = self._rows()[0]
            _, _, x0, x1 = read_bounds(tile, g.height, g.width)
            for index in range(x0 // self.columns, -(-x1 // self.columns)):
                acc, wsum = self._window(index)
                add_weighted(acc, wsum, top, tile, outputs, self.weight, g, index * self.columns)
        if tile.row != self._groups[self._group].stop - 1:
            return  # the tile column goes on below
        if tile.col == g.cols - 1:
            done = self._windows
        else:
            done = g.row_tiles(tile.row)[tile.col + 1].x // self.columns
        while self._next_window < done:
            self._close(self._next_window)
            self._next_window += 1
        if tile.col == g.cols - 1:
            self._group += 1
            self._next_window = 0

    def pop_final(self) -> Iterator[BlendedWindow]:
        """Final windows, in order: ``(first row, first column, (layers, rows, columns))``.

        A row group's windows come left to right, and the groups top to bottom.
        Pixels no tile covered (all skipped) are NaN. Each window is divided out
        as it is asked for, so one need not be held while the next is made.
        """
        while self._final:
            top, left, acc, wsum = self._final.pop(0)
            block = np.full(acc.shape, np.nan, dtype=np.float32)
            np.divide(acc, wsum, out=block, where=wsum > 0)
            del acc, wsum
            yield top, left, block

    @property
    def finished(self) -> bool:
        """Whether every tile has been added and every window handed out."""
        return self._group >= len(self._groups) and not self._final


class RowJoiner:
    """Joins a row group's windows back into whole-width blocks of rows.

    For consumers that need whole rows (resampling back to the input's grid):
    they hold a block of rows across the scene, as blending used to.
    """

    def __init__(self, width: int) -> None:
        self.width = width
        self._parts: list[np.ndarray] = []

    def push(self, first: int, col: int, block: np.ndarray) -> tuple[int, np.ndarray] | None:
        """Add a window; the whole block of rows once its last window is in."""
        self._parts.append(block)
        if col + block.shape[2] < self.width:
            return None
        parts, self._parts = self._parts, []
        return first, np.concatenate(parts, axis=2)
