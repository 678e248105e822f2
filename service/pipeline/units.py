"""Work units of a scene job: blocks of tiles, their partial sums, and the blend of them all.

A scene job shared through a queue is split into units, each a block of whole
tile rows of the job's grid, or part of one row where a row holds more tiles
than a unit should. A unit runs its tiles (each with its halo, as a
whole-scene run reads them) and keeps, over the scene pixels its tiles touch,
the sum of Hann-weighted outputs and the sum of weights (float32), exactly as
:class:`service.runtime.tiling.StripBlender` adds them. Finishing adds the
units' partial sums where they overlap and divides, block of rows by block of
rows in column windows, handing the task's ``flush`` windows as a whole-scene
run does: outputs agree with it to float32 rounding (the sums are added in
another order).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.runtime.tiling import (
    WINDOW_COLUMNS,
    BlendedWindow,
    Tile,
    TileGrid,
    add_weighted,
    hann_weight,
    read_bounds,
)


@dataclass(frozen=True)
class Unit:
    """Tiles of rows ``[first, stop)`` and columns ``[left, right)`` of a job's grid.

    ``index`` numbers it in the job; ``right`` None: to the last column.
    """

    index: int
    first: int
    stop: int
    left: int = 0
    right: int | None = None

    def cols(self, grid: TileGrid) -> range:
        """Its tile columns."""
        return range(self.left, grid.cols if self.right is None else self.right)

    def to_json(self) -> list[int]:
        """``[first, stop, left, right]``, as a job's record keeps it."""
        return [self.first, self.stop, self.left, -1 if self.right is None else self.right]

    @classmethod
    def from_json(cls, index: int, data: list[int]) -> Unit:
        """Inverse of :meth:`to_json` (``[first, stop]`` alone: whole rows)."""
        first, stop, left, right = [*data, 0, -1][:4]
        return cls(index, first, stop, left, None if right < 0 else right)


def plan_units(grid: TileGrid, unit_tiles: int) -> list[Unit]:
    """The grid in blocks of about ``unit_tiles`` tiles: whole rows, or parts of one row.

    A grid wider than ``unit_tiles`` is cut across its columns too, so that one
    unit's partial sums stay the size of its tiles however wide the scene is.
    """
    per_rows = max(1, unit_tiles // max(1, grid.cols))
    per_cols = grid.cols if unit_tiles >= grid.cols else max(1, unit_tiles)
    units: list[Unit] = []
    for first in range(0, grid.rows, per_rows):
        for left in range(0, grid.cols, per_cols):
            right = None if left + per_cols >= grid.cols else left + per_cols
            units.append(Unit(len(units), first, min(grid.rows, first + per_rows), left, right))
    return units


def unit_extent(grid: TileGrid, unit: Unit) -> tuple[int, int, int, int]:
    """Scene pixels ``(top, bottom, left, right)`` the tiles of ``unit`` write to."""
    cols = unit.cols(grid)
    first = grid.row_tiles(unit.first)[cols.start]
    last = grid.row_tiles(unit.stop - 1)[cols.stop - 1]
    top, _, left, _ = read_bounds(first, grid.height, grid.width)
    _, bottom, _, right = read_bounds(last, grid.height, grid.width)
    return top, bottom, left, right


@dataclass
class PartialSums:
    """One unit's weighted sums over scene rows ``[top, bottom)`` and columns ``[left, right)``.

    Attributes:
        top: first scene row held.
        acc: ``(layers, rows, columns)`` float32 sum of weight x output.
        wsum: ``(rows, columns)`` float32 sum of weights.
        sums: per-job totals a task adds up over tiles (per-band weights, say).
        left: first scene column held.
    """

    top: int
    acc: np.ndarray
    wsum: np.ndarray
    sums: dict[str, np.ndarray] = field(default_factory=dict)
    left: int = 0

    @classmethod
    def empty(cls, grid: TileGrid, unit: Unit, layers: int) -> PartialSums:
        """Zero sums over the pixels ``unit`` writes to."""
        top, bottom, left, right = unit_extent(grid, unit)
        return cls(
            top,
            np.zeros((layers, bottom - top, right - left), np.float32),
            np.zeros((bottom - top, right - left), np.float32),
            left=left,
        )

    @property
    def bottom(self) -> int:
        """One past the last scene row held."""
        return self.top + int(self.wsum.shape[0])

    @property
    def right(self) -> int:
        """One past the last scene column held."""
        return self.left + int(self.wsum.shape[1])

    def to_bytes(self) -> bytes:
        """An uncompressed ``.npz``: the same sums give the same bytes."""
        out = io.BytesIO()
        arrays: dict[str, Any] = {
            "top": np.array(self.top),
            "left": np.array(self.left),
            "acc": self.acc,
            "wsum": self.wsum,
        }
        arrays.update((f"sum_{k}", np.asarray(v)) for k, v in sorted(self.sums.items()))
        np.savez(out, **arrays)
        return out.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> PartialSums:
        """Read what :meth:`to_bytes` wrote."""
        with np.load(io.BytesIO(data), allow_pickle=False) as got:
            sums = {k[4:]: got[k] for k in got.files if k.startswith("sum_")}
            left = int(got["left"]) if "left" in got.files else 0
            return cls(int(got["top"]), got["acc"], got["wsum"], sums, left)


class UnitBlender:
    """Adds a unit's tile outputs into its :class:`PartialSums` (a StripBlender's maths).

    It stands in for the whole-scene blender in the grid loop: no rows are
    ever final inside one unit, so :meth:`pop_final` hands out nothing.
    """

    def __init__(self, grid: TileGrid, unit: Unit, layers: int) -> None:
        self.grid = grid
        self.weight = hann_weight(grid.size)
        self.partial = PartialSums.empty(grid, unit, layers)

    def add(self, tile: Tile, outputs: np.ndarray | None) -> None:
        """Add one tile's ``(layers, size, size)`` outputs (None: skipped, no data)."""
        if outputs is None:
            return
        p = self.partial
        add_weighted(p.acc, p.wsum, p.top, tile, outputs, self.weight, self.grid, p.left)

    def pop_final(self) -> Iterator[BlendedWindow]:
        """Nothing is final inside a unit."""
        return iter(())


def blend_units(
    grid: TileGrid,
    units: list[Unit],
    load: Callable[[Unit], PartialSums],
    sums: dict[str, np.ndarray],
    columns: int = WINDOW_COLUMNS,
) -> Iterator[BlendedWindow]:
    """The final windows a whole-scene run flushes, from the units' partial sums.

    Yields ``(first scene row, first column, (layers, rows, columns) float32)``,
    NaN where no tile had data: each grid row's block of rows in windows of
    ``columns``, left to right. Partials are loaded as their rows come up and
    dropped once passed, so at most the units overlapping one block are held;
    ``sums`` gets each unit's totals added in.
    """
    held: dict[int, PartialSums] = {}
    extents = {u.index: unit_extent(grid, u)[:2] for u in units}
    loaded: set[int] = set()
    for row in range(grid.rows):
        start, stop = grid.block_rows(row)
        if stop <= start:
            continue
        for unit in units:
            top, bottom = extents[unit.index]
            if unit.index not in loaded and top < stop and bottom > start:
                part = load(unit)
                loaded.add(unit.index)
                held[unit.index] = part
                add_sums(sums, part.sums)
        layers = next((p.acc.shape[0] for p in held.values()), 0)
        touching = [p for p in held.values() if max(start, p.top) < min(stop, p.bottom)]
        for first_col in range(0, grid.width, columns) if touching else ():
            last_col = min(grid.width, first_col + columns)
            acc = np.zeros((layers, stop - start, last_col - first_col), np.float32)
            wsum = np.zeros((stop - start, last_col - first_col), np.float32)
            for part in touching:
                lo, hi = max(start, part.top), min(stop, part.bottom)
                left, right = max(first_col, part.left), min(last_col, part.right)
                if right <= left:
                    continue
                y, x = slice(lo - start, hi - start), slice(left - first_col, right - first_col)
                py = slice(lo - part.top, hi - part.top)
                px = slice(left - part.left, right - part.left)
                acc[:, y, x] += part.acc[:, py, px]
                wsum[y, x] += part.wsum[py, px]
            block = np.full(acc.shape, np.nan, np.float32)
            np.divide(acc, wsum, out=block, where=wsum > 0)
            yield start, first_col, block
        for index in [i for i, p in held.items() if p.bottom <= stop]:
            del held[index]
    for unit in units:  # a unit whose rows no block needed still counts its totals
        if unit.index not in loaded:
            add_sums(sums, load(unit).sums)


def add_sums(into: dict[str, np.ndarray], sums: dict[str, np.ndarray]) -> None:
    """Add a unit's totals to ``into`` in place (an empty or missing total takes the unit's)."""
    for key, value in sums.items():
        have = into.get(key)
        if have is None or have.size == 0:
            into[key] = value.copy()
        else:
            have += value


@dataclass(frozen=True)
class PlanPass:
    """A run that only plans: the task's grid comes back in :class:`GridPlanned`."""


@dataclass(frozen=True)
class UnitPass:
    """A run of one unit's tiles; ``save`` stores its partial sums (on a worker thread)."""

    unit: Unit
    save: Callable[[PartialSums], None]


@dataclass(frozen=True)
class FinishPass:
    """The finishing run: every unit's partial sums blended and written as the job's outputs."""

    units: list[Unit]
    load: Callable[[Unit], PartialSums]


ScenePart = PlanPass | UnitPass | FinishPass
"""Which part of a scene job a run does (None in :class:`SceneWork`: all of it)."""


class GridPlanned(Exception):
    """A planning run ends here, with the job's tile grid."""

    def __init__(self, grid: TileGrid) -> None:
        super().__init__("planned")
        self.grid = grid


class UnitStored(Exception):
    """A unit's run ends here: its partial sums are stored."""
