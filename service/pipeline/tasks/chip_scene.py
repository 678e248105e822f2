"""Chip classifiers over whole scenes: chips on a grid, a class raster at chip resolution.

A scene is walked in square chips of the model's size, ``stride`` pixels apart
(the chip's side unless the job asks for ``chip_stride``). Pixel ``(r, c)`` of
the class raster stands for the ``stride x stride`` input pixels from
``(r * stride, c * stride)`` on: the centre of its chip, which is read
``(chip - stride) / 2`` pixels further up and left. Chips run through the
model's batcher exactly as a synchronous chip does (nodata pixels filled the
same way); pixels beyond the raster count as nodata, and a chip with less than
half of its pixels valid gets no class. Each attention output is mosaicked at
its own resolution from the same central part of each chip.

Rows of chips are independent of each other: where a shared queue splits the
job, a unit classifies a block of chip rows and stores them as they will be
written, and finishing writes the units' rows in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from rasterio.io import DatasetReader
from rasterio.windows import Window

from service.errors import InvalidInput
from service.jobs.record import Layer, Tiling
from service.jobs.store import FILE_NAME
from service.pipeline.scene_grid import (
    JobCancelled,
    SceneOptions,
    SceneWork,
    abort,
    to_thread_to_end,
)
from service.pipeline.scene_read import all_valid, open_scene, read_window
from service.pipeline.tasks.classes import ClassSceneOutputs
from service.pipeline.units import (
    FinishPass,
    GridPlanned,
    PartialSums,
    PlanPass,
    UnitPass,
    UnitStored,
)
from service.raster.cog import RasterSink
from service.raster.decode import RasterInfo, describe
from service.raster.georef import Georeference
from service.runtime.chips import ChipClassifier, ChipOutputs, cell_size, chip_shape, map_outputs
from service.runtime.manifest import Manifest, OutputSpec
from service.runtime.tiling import TileGrid

# A chip with less valid input than this share of its pixels gets no class.
MIN_VALID_SHARE = 0.5
# Chip sides a model without a fixed size is run at, when neither job nor manifest says.
DEFAULT_CHIP = 256


@dataclass(frozen=True)
class ChipGrid:
    """Chips of ``chip`` pixels every ``stride`` pixels over a ``height x width`` raster."""

    height: int
    width: int
    chip: int
    stride: int

    @property
    def offset(self) -> int:
        """Pixels a chip reaches above and left of the class pixel it stands for."""
        return (self.chip - self.stride) // 2

    @property
    def rows(self) -> int:
        """Rows of chips: the class raster's height."""
        return -(-self.height // self.stride)

    @property
    def cols(self) -> int:
        """Columns of chips: the class raster's width."""
        return -(-self.width // self.stride)

    def __len__(self) -> int:
        return self.rows * self.cols

    def as_tiles(self) -> TileGrid:
        """The grid as a queue plans units of it: one-pixel tiles of the class raster."""
        return TileGrid(self.rows, self.cols, 1, 0)

    def georef(self, source: Georeference, cell: int) -> Georeference:
        """The grid of values ``cell`` input pixels a side over the chips' extent."""
        a, b, c, d, e, f = source.transform
        per = self.stride // cell
        transform = (a * cell, b * cell, c, d * cell, e * cell, f)
        return Georeference(
            source.crs, transform, self.cols * per, self.rows * per, source.warnings
        )

    def read_row(
        self, ds: DatasetReader, info: RasterInfo, row: int, valid_everywhere: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """A row of chips: ``(C, chip, span)`` values and ``(chip, span)`` validity.

        ``span`` covers every chip of the row side by side (overlapping where the
        stride is shorter than the chip); pixels beyond the raster are invalid.
        """
        top, left = row * self.stride - self.offset, -self.offset
        span = (self.cols - 1) * self.stride + self.chip
        data = np.zeros((len(info.indexes) or info.count, self.chip, span), ds.dtypes[0])
        valid = np.zeros((self.chip, span), bool)
        y0, y1 = max(0, top), min(info.height, top + self.chip)
        x0, x1 = max(0, left), min(info.width, left + span)
        if y1 <= y0 or x1 <= x0:
            return data, valid
        window = Window(x0, y0, x1 - x0, y1 - y0)
        part, ok = read_window(ds, info, window, valid_everywhere)
        rows, cols = slice(y0 - top, y1 - top), slice(x0 - left, x1 - left)
        data[:, rows, cols] = part
        valid[rows, cols] = ok
        return data, valid


def chip_side(manifest: Manifest, asked: int | None) -> int:
    """The side of a scene's chips: the model's fixed one, else the job's or manifest's size."""
    fixed = chip_shape(manifest)
    grids = [spec.grid for spec in manifest.attention if spec.grid is not None]
    if (fixed and fixed[0] != fixed[1]) or any(g[0] != g[1] for g in grids):
        raise InvalidInput(
            f"model {manifest.ref!r}: scenes are walked in square chips, with square "
            "patches where a token grid covers them"
        )
    if fixed is not None:
        if asked is not None and asked != fixed[0]:
            raise InvalidInput(
                f"tile_size: model {manifest.ref!r} classifies chips of {fixed[0]} pixels "
                f"a side, not {asked}; leave tile_size out"
            )
        return fixed[0]
    side = asked or manifest.input.tile_size or DEFAULT_CHIP
    multiple = manifest.input.size_multiple or 1
    for spec in manifest.attention:
        multiple = int(np.lcm(multiple, spec.stride))
    return -(-side // multiple) * multiple


def cells(manifest: Manifest, chip: int) -> dict[str, int]:
    """Input pixels per value (a side) of each attention output, over chips of ``chip``."""
    return {spec.name: cell_size(spec, chip) for spec in map_outputs(manifest)}


def chip_stride(manifest: Manifest, options: SceneOptions) -> tuple[int, int]:
    """``(chip, stride)`` of a scene job, checked: every attention map must tile the grid.

    The stride is at most the chip and, as the part of each chip kept, a whole
    number of every attention map's cells, centred on cell boundaries.
    """
    if options.overlap is not None:
        raise InvalidInput(
            "overlap: a chip classifier's scene is walked in chips; give chip_stride instead"
        )
    chip = chip_side(manifest, options.tile_size)
    stride = options.chip_stride or chip
    sizes = set(cells(manifest, chip).values())

    def fits(s: int) -> bool:
        return all(s % c == 0 and (chip - s) % (2 * c) == 0 for c in sizes) and (chip - s) % 2 == 0

    if not (1 <= stride <= chip and fits(stride)):
        allowed = [s for s in range(chip, 0, -1) if fits(s)]
        cellwise = f" and attention maps of {sorted(sizes)}-pixel cells" if sizes else ""
        raise InvalidInput(
            f"chip_stride {stride} does not fit chips of {chip} pixels{cellwise}: the stride is "
            "at most the chip, and the margin it leaves a whole number of cells on each side; "
            f"strides that fit, largest first: {', '.join(map(str, allowed[:8]))}"
        )
    return chip, stride


def attention_file(index: int, spec: OutputSpec) -> str:
    """The COG of one attention output's mosaic: named after it where a job's file may be."""
    named = f"attention_{spec.name}.tif"
    return named if FILE_NAME.match(named) else f"attention_{index}.tif"


# Rows of chips as a unit of a shared queue stores them: class probabilities in
# ``acc``, which chips have a class in ``wsum``, each attention map's rows in ``sums``.
ATTENTION_SUM = "attention:"


class ChipRows:
    """How a row of chips' outputs lay out as rows of the job's rasters."""

    def __init__(self, manifest: Manifest, grid: ChipGrid) -> None:
        self.manifest = manifest
        self.grid = grid
        self.cells = cells(manifest, grid.chip)

    def per(self, name: str) -> int:
        """Rows (and columns) of an attention map per chip."""
        return self.grid.stride // self.cells[name]

    def assemble(self, chips: list[ChipOutputs | None]) -> PartialSums:
        """One row of chips (None: no class) as the rows it writes."""
        cols = self.grid.cols
        probs = np.full((len(self.manifest.classes), 1, cols), np.nan, np.float32)
        for col, out in enumerate(chips):
            if out is not None:
                probs[:, 0, col] = out.probabilities
        sums: dict[str, np.ndarray] = {}
        for name, cell in self.cells.items():
            per, skip = self.per(name), self.grid.offset // cell
            mosaic = np.full((per, cols * per), np.nan, np.float32)
            for col, out in enumerate(chips):
                if out is not None:
                    part = out.maps[name][skip : skip + per, skip : skip + per]
                    mosaic[:, col * per : (col + 1) * per] = part
            sums[ATTENTION_SUM + name] = mosaic
        return PartialSums(0, probs, np.isfinite(probs[0]).astype(np.float32), sums)

    @staticmethod
    def stack(top: int, rows: list[PartialSums]) -> PartialSums:
        """Consecutive rows from chip row ``top`` on, as one unit's partial."""
        return PartialSums(
            top,
            np.concatenate([r.acc for r in rows], axis=1),
            np.concatenate([r.wsum for r in rows]),
            {k: np.concatenate([r.sums[k] for r in rows]) for k in rows[0].sums},
        )


class ChipMosaic:
    """Where a chip scene's rows go: class map and probabilities, one COG per attention map."""

    def __init__(self, work: SceneWork, info: RasterInfo, layout: ChipRows) -> None:
        manifest = work.served.manifest
        grid = layout.grid
        self.layout = layout
        chips = replace(info, georef=grid.georef(info.georef, grid.stride))
        self.classes = ClassSceneOutputs(work, chips, [manifest.prediction])
        self.attention: dict[str, tuple[OutputSpec, str, RasterSink]] = {}
        for i, spec in enumerate(map_outputs(manifest)):
            georef = grid.georef(info.georef, layout.cells[spec.name])
            file = attention_file(i, spec)
            sink = work.sink(file, replace(info, georef=georef), [f"{spec.name} ({spec.kind})"])
            self.attention[spec.name] = (spec, file, sink)
        self.georef = info.georef

    @property
    def sinks(self) -> dict[str, RasterSink]:
        """Every output being written."""
        sinks = dict(self.classes.sinks)
        sinks.update({f"attention:{name}": sink for name, (_, _, sink) in self.attention.items()})
        return sinks

    def write(self, rows: PartialSums) -> None:
        """Rows of chips from chip row ``rows.top`` on, in every output (on a worker thread)."""
        self.classes.write(rows.top, rows.acc)
        for name, (_, _, sink) in self.attention.items():
            sink.write(rows.top * self.layout.per(name), rows.sums[ATTENTION_SUM + name][None])

    def finish(self) -> list[Layer]:
        """Finish the COGs; their layers, each with its stride in input pixels."""
        for sink in self.sinks.values():
            sink.finish()
        grid = self.layout.grid
        layers = self.classes.layers(grid.georef(self.georef, grid.stride).to_json())
        for layer in layers:
            layer.stride = grid.stride
        layers[
            0
        ].description = (
            f"{layers[0].description}, one pixel per chip of {grid.chip} pixels every {grid.stride}"
        )
        for name, (spec, file, sink) in self.attention.items():
            per = self.layout.per(name)
            layers.append(
                Layer(
                    name=name,
                    role=spec.role,
                    kind=spec.kind,
                    shape=[grid.rows * per, grid.cols * per],
                    dtype=sink.dtype,
                    stride=self.layout.cells[name],
                    description=spec.description or None,
                    storage="cog",
                    file=file,
                    band=1,
                )
            )
        return layers


async def classify_rows(
    work: SceneWork,
    ds: DatasetReader,
    grid: ChipGrid,
    rows: range,
    each: Callable[[int, list[ChipOutputs | None]], None],
) -> None:
    """Classify chip rows ``rows`` in order; ``each`` gets every row's chips, on a worker thread."""
    manifest = work.served.manifest
    model = ChipClassifier(manifest, work.served.batcher)
    info = describe(ds)
    valid_everywhere = all_valid(ds)
    gate = asyncio.Semaphore(work.in_flight_tiles)
    enough = MIN_VALID_SHARE * grid.chip * grid.chip
    chip, stride = grid.chip, grid.stride

    async def one(data: np.ndarray, valid: np.ndarray) -> ChipOutputs | None:
        if valid.sum() < enough:
            return None
        async with gate:
            if work.cancelled():
                raise JobCancelled
            mask = None if valid.all() else valid
            return await model.native(data, mask, work.timeout_s)

    def read(row: int) -> asyncio.Future[tuple[np.ndarray, np.ndarray]]:
        return asyncio.ensure_future(
            asyncio.to_thread(grid.read_row, ds, info, row, valid_everywhere)
        )

    reading = read(rows.start)
    chips: list[asyncio.Future[ChipOutputs | None]] = []
    try:
        for row in rows:
            data, valid = await reading
            if row + 1 < rows.stop:
                reading = read(row + 1)  # read while this row is inferred
            chips = [
                asyncio.ensure_future(one(data[:, :, x : x + chip], valid[:, x : x + chip]))
                for x in range(0, grid.cols * stride, stride)
            ]
            results = await asyncio.gather(*chips)
            await to_thread_to_end(each, row, results)
            work.progress((row + 1 - rows.start) * grid.cols, len(rows) * grid.cols)
    except BaseException:
        for task in chips:
            task.cancel()
        # The reader thread must be done with the dataset before it closes:
        # waited for, not cancelled (a thread runs on regardless).
        with contextlib.suppress(BaseException):
            await asyncio.gather(reading, *chips, return_exceptions=True)
        raise


async def run_chip_scene(work: SceneWork) -> None:
    """Classify a scene chip by chip; fills the record's layers and tiling.

    Under a shared queue (``work.part``): plans units of chip rows, classifies
    one unit's rows and stores them, or writes every unit's rows and finishes.
    """
    record, manifest, part = work.record, work.served.manifest, work.part
    chip, stride = chip_stride(manifest, work.options)
    with open_scene(work.paths[0]) as ds:
        info = describe(ds)
        grid = ChipGrid(info.height, info.width, chip, stride)
        layout = ChipRows(manifest, grid)
        if isinstance(part, PlanPass):
            raise GridPlanned(grid.as_tiles())
        if isinstance(part, UnitPass):
            done: list[PartialSums] = []
            rows = range(part.unit.first, part.unit.stop)
            await classify_rows(work, ds, grid, rows, lambda _, c: done.append(layout.assemble(c)))
            await to_thread_to_end(part.save, ChipRows.stack(rows.start, done))
            raise UnitStored
        mosaic = ChipMosaic(work, info, layout)
        sinks = mosaic.sinks

        def write(row: int, chips: list[ChipOutputs | None]) -> None:
            rows = layout.assemble(chips)
            rows.top = row
            mosaic.write(rows)
            work.check_disk(sinks, False)

        try:
            if isinstance(part, FinishPass):
                for unit in part.units:
                    stored = await to_thread_to_end(part.load, unit)
                    await to_thread_to_end(mosaic.write, stored)
            else:
                await classify_rows(work, ds, grid, range(grid.rows), write)
            await to_thread_to_end(work.check_disk, sinks, True)
            record.layers = await to_thread_to_end(mosaic.finish)
        except BaseException:
            await abort(sinks)
            raise
    record.tiling = Tiling(chip, chip - stride, len(grid))
