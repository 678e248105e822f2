"""Intake: an upload or a JSON body, opened and checked once, as a typed request to run."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

from service.config import Settings
from service.errors import InvalidInput, PayloadTooLarge
from service.memory import MemoryBudget, Reservation
from service.pipeline import reference_intake, uploads
from service.pipeline.inputs import (
    PredictJSON,
    RasterInput,
    SeriesInput,
    image_bytes,
    image_from_json,
    parse_dates,
    scene_bytes,
    series_from_json,
    stack_bytes,
)
from service.pipeline.references import References
from service.pipeline.scene_check import check_scene
from service.pipeline.scene_grid import SceneOptions
from service.pipeline.stac_inputs import ReferenceQuery
from service.pipeline.tasks import task_for
from service.pipeline.threads import thread_future
from service.raster.decode import (
    RasterInfo,
    RasterLimits,
    check_limits,
    describe,
    open_geotiff,
)
from service.raster.georef import Georeference
from service.raster.gsd import GSD_LIMITS_M
from service.raster.resample import Resampling, check_grid, plan_resampling
from service.runtime.repository import ServedModel
from service.runtime.tiling import tiling_problem

# A synchronous upload may decode to at most this many times the largest body
# (Settings.max_upload_mb). The body limit bounds what is sent; this bounds
# what it becomes once decoded, read from the header: a compressed GeoTIFF
# rightly decodes to several times its size, while a small file that would
# inflate to gigabytes (a decompression bomb) is refused before any pixel.
DECODE_RATIO = 16

# A JSON image is nested lists of numbers: past this size a GeoTIFF is smaller
# and faster to read.
JSON_IMAGE_MAX_PIXELS = 512 * 512

# Tile sizes and overlaps a scene job may ask for.
TILE_SIZES = (64, 4096)
OVERLAPS = (0, 2048)
CHIP_STRIDES = (1, 4096)
COMPRESSIONS = ("deflate", "zstd")
Held = TypeVar("Held")


def flag(value: str | None, name: str) -> bool:
    """A boolean form field: 1/true/yes/on or 0/false/no/off (absent: False)."""
    if value is None:
        return False
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise InvalidInput(f"{name} must be true or false, not {value!r}")


def probability(fields: Mapping[str, str], name: str) -> float | None:
    """A probability field in [0, 1] (absent: None)."""
    if name not in fields:
        return None
    try:
        value = float(fields[name])
    except ValueError:
        raise InvalidInput(f"{name} must be a number from 0 to 1, not {fields[name]!r}") from None
    if not 0 <= value <= 1:  # NaN fails too
        raise InvalidInput(f"{name} must be from 0 to 1, not {fields[name]}")
    return value


def _bounded_int(fields: Mapping[str, str], name: str, bounds: tuple[int, int]) -> int | None:
    if name not in fields:
        return None
    try:
        value = int(fields[name])
    except ValueError:
        raise InvalidInput(f"{name} must be an integer") from None
    low, high = bounds
    if not low <= value <= high:
        raise InvalidInput(f"{name} must be between {low} and {high}")
    return value


def ground_sample_distance(fields: Mapping[str, str], name: str = "gsd_m") -> float | None:
    """A stated metres per pixel within :data:`GSD_LIMITS_M` (absent: None)."""
    if name not in fields:
        return None
    low, high = GSD_LIMITS_M
    try:
        value = float(fields[name])
    except ValueError:
        raise InvalidInput(f"{name} must be metres per pixel, not {fields[name]!r}") from None
    if not low <= value <= high:  # NaN fails too
        raise InvalidInput(f"{name} must be from {low:g} to {high:g} metres per pixel")
    return value


@dataclass(frozen=True)
class UploadOptions:
    """The options of an upload besides its model and images, checked."""

    dates: list[date] | None = None
    format: str | None = None
    run_async: bool = False
    tile_size: int | None = None
    overlap: int | None = None
    uint8: bool = False
    compress: str = "deflate"
    min_confidence: float | None = None
    chip_stride: int | None = None
    gsd_m: float | None = None

    @classmethod
    def from_fields(cls, fields: Mapping[str, str], run_async: str | None = None) -> UploadOptions:
        """Options from an upload's text fields (``run_async``: the field, or the query's)."""
        options = cls(
            dates=parse_dates(fields["dates"]) if fields.get("dates") else None,
            format=fields.get("format"),
            run_async=flag(fields.get("async") or run_async, "async"),
            tile_size=_bounded_int(fields, "tile_size", TILE_SIZES),
            overlap=_bounded_int(fields, "overlap", OVERLAPS),
            uint8=flag(fields.get("uint8"), "uint8"),
            compress=fields.get("compress", "deflate"),
            min_confidence=probability(fields, "min_confidence"),
            chip_stride=_bounded_int(fields, "chip_stride", CHIP_STRIDES),
            gsd_m=ground_sample_distance(fields),
        )
        if options.compress not in COMPRESSIONS:
            raise InvalidInput("compress must be deflate or zstd")
        if options.tile_size and options.overlap:
            problem = tiling_problem(options.tile_size, options.overlap)
            if problem:
                raise InvalidInput(problem)
        return options


@dataclass
class SyncRequest:
    """An input decoded to run at once, with the memory reserved for it until it has run."""

    served: ServedModel
    input: RasterInput | SeriesInput
    held: Reservation


@dataclass
class SceneRequest:
    """An upload to run as a scene job, window by window, from its stored files.

    Attributes:
        served: the model.
        parts: the uploaded files (bytes, or the files they were spooled to), stored as the
            job's input.
        options: tiling and output options, with the tile size that fits the budget.
        limits: what each stored file is checked against.
        georef: the first file's georeference.
        resampling: for segmentation models, how tiles go to the model's grid.
        references: the URLs read window by window instead of stored files (parts empty).
    """

    served: ServedModel
    parts: list[bytes | Path]
    options: SceneOptions
    limits: RasterLimits
    georef: Georeference
    resampling: Resampling | None
    references: list[str] | None = None

    def check(self, paths: list[Path]) -> None:
        """Check the stored files (layout, georeference, value scale) before the job is accepted."""
        if self.references:
            return  # checked where they are, at intake
        check_scene(paths, self.served.manifest, self.limits, self.options.dates)


def check_min_confidence(served: ServedModel, asked: float | None) -> None:
    """Refuse a ``min_confidence`` for a model that makes no class map."""
    if asked is not None and not task_for(served.manifest).class_maps:
        raise InvalidInput(
            f"min_confidence: model {served.manifest.ref!r} makes no class map "
            "(only class_probabilities segmentation and chip classifiers do)"
        )


async def _holding(call: Callable[..., Held], *args: Any) -> Held:
    """``asyncio.to_thread(call, *args)`` for a call that may reserve memory.

    A thread cannot be stopped: when the awaiting request is cancelled (the
    server shutting down), the call still runs to its end and returns a
    reservation nobody would release. Here a cancel returns at once and the
    reservation the call makes is released when it ends.
    """
    future = thread_future(call, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(_release_result)
        raise


def _release_result(future: asyncio.Future[Any]) -> None:
    """Release the reservation a finished call returned, if it returned one."""
    if future.cancelled() or future.exception() is not None:
        return  # its error was the request's to report; the request is gone
    result = future.result()
    held = result.held if isinstance(result, SyncRequest) else result
    if isinstance(held, Reservation):
        held.release()


def _itemsize(info: RasterInfo) -> int:
    return max(1, info.decoded_bytes // max(1, info.width * info.height * info.count))


class Intake:
    """Turns uploads and JSON bodies into sync or scene requests, within the server's limits."""

    def __init__(self, settings: Settings, budget: MemoryBudget) -> None:
        self.settings = settings
        self.budget = budget
        self.remote = References.from_settings(settings)
        # Scenes are read window by window, never decoded whole: no byte limit.
        self.scene_limits = RasterLimits(
            max_pixels=settings.max_scene_pixels, max_bands=settings.max_bands, max_bytes=2**62
        )

    def sync_limits(self, served: ServedModel) -> RasterLimits:
        """The limits of an upload answered synchronously by ``served``."""
        s = self.settings
        return RasterLimits(
            max_pixels=s.max_sync_series_pixels if served.task.dated else s.max_sync_pixels,
            max_bands=s.max_bands,
            max_bytes=int(s.max_upload_mb * 2**20 * DECODE_RATIO),
        )

    async def upload(
        self, served: ServedModel, parts: Sequence[bytes | Path], options: UploadOptions
    ) -> SyncRequest | SceneRequest:
        """An upload as a synchronous request, or a scene job when too large to run at once.

        Each part is opened once; every header is checked before any part is
        decoded, and the memory of a synchronous request is reserved before.
        """
        manifest = served.manifest
        check_min_confidence(served, options.min_confidence)
        if not served.task.dated:
            if len(parts) != 1:
                raise InvalidInput(f"model {manifest.name} takes one image, got {len(parts)}")
            image = await _holding(self._image, served, parts[0], options)
            if isinstance(image, SyncRequest):
                return image
            info, plan = image
            return self.scene_request(served, parts, options, [info], plan)
        dated = await _holding(self._series, served, parts, options)
        if isinstance(dated, SyncRequest):
            return dated
        return self.scene_request(served, parts, options, dated, None)

    async def references(
        self, served: ServedModel, query: ReferenceQuery, options: UploadOptions
    ) -> SyncRequest | SceneRequest:
        """Inputs by reference (see :func:`service.pipeline.reference_intake.by_reference`)."""
        check_min_confidence(served, options.min_confidence)
        return await reference_intake.by_reference(self, served, query, options)

    def _image(
        self, served: ServedModel, data: bytes | Path, options: UploadOptions
    ) -> SyncRequest | tuple[RasterInfo, Resampling]:
        """The decoded image, or its header and grid plan when it must run as a scene job.

        An image is synchronous when the client did not ask for a job, when it
        fits the limits both as sent and on the model's grid, and when its
        estimated memory fits one request's share of the budget.
        """
        manifest = served.manifest
        with open_geotiff(data) as dataset:
            info = describe(dataset)
            check_limits(info, self.scene_limits)
            plan = self.grid_plan(served, info, options.gsd_m)
            sync = self.sync_limits(served)
            pixels = max(info.width * info.height, plan.model_pixels)
            if options.run_async or pixels > sync.max_pixels:
                return info, plan
            need = image_bytes(served, pixels, info.count, _itemsize(info))
            if not self.budget.fits(need):
                return info, plan  # tiled as a scene job: its memory is bounded by the tile
            held = self.budget.reserve(need, f"a {info.width}x{info.height} image")
            try:
                raster = uploads.read_open_image(dataset, info, manifest, sync)
            except BaseException:
                held.release()
                raise
            raster.resampling = plan
            raster.min_confidence = options.min_confidence
            return SyncRequest(served, raster, held)

    def _series(
        self, served: ServedModel, parts: Sequence[bytes | Path], options: UploadOptions
    ) -> SyncRequest | list[RasterInfo]:
        """The dated images as series, or their headers when they must run as a scene job."""
        manifest = served.manifest
        dates = options.dates or []
        with contextlib.ExitStack() as stack:
            opened = []
            for data in parts:
                dataset = stack.enter_context(open_geotiff(data))
                info = describe(dataset)
                check_limits(info, self.scene_limits)
                opened.append((dataset, info))
            infos = [info for _, info in opened]
            first = infos[0]
            sync = self.sync_limits(served)
            pixels = first.width * first.height
            if options.run_async or pixels > sync.max_pixels:
                return infos
            t = uploads.date_count(infos, manifest, len(dates), self.settings.max_dates)
            need = stack_bytes(served, pixels, t, max(_itemsize(i) for i in infos))
            if not self.budget.fits(need):
                return infos  # tiled as a scene job: its memory is bounded by the tile
            held = self.budget.reserve(need, f"{t} dated images of {first.width}x{first.height}")
            try:
                rasters = [uploads.read_open_dated(ds, i, manifest, sync) for ds, i in opened]
                series = uploads.series_from_rasters(rasters, dates, manifest)
            except BaseException:
                held.release()
                raise
            return SyncRequest(served, series, held)

    def grid_plan(
        self, served: ServedModel, info: RasterInfo, stated_gsd_m: float | None = None
    ) -> Resampling:
        """How an image meets the model's ground resolution, checked against the scene limits.

        ``stated_gsd_m``: the request's ``gsd_m``, for an image without a georeference.
        """
        s = self.settings
        plan = plan_resampling(
            info.georef,
            served.manifest.input.gsd_m,
            s.resample_tolerance,
            s.resample_max_factor,
            stated_gsd_m,
        )
        check_grid(plan, self.scene_limits)
        return plan

    def scene_request(
        self,
        served: ServedModel,
        parts: Sequence[bytes | Path],
        options: UploadOptions,
        infos: list[RasterInfo],
        plan: Resampling | None,
        count: int | None = None,
    ) -> SceneRequest:
        """A scene job of ``count`` inputs (default: the parts), its tile fitted to the budget."""
        manifest = served.manifest
        dates: list[str] = []
        if served.task.dated:
            if options.dates is not None:
                dates = [d.isoformat() for d in options.dates]
            else:
                # Without a dates field, a single stack may carry its dates as band tags.
                single = (count or len(parts)) == 1
                dates = infos[0].dates[:: len(manifest.input.bands)] if single else []
                if not dates:
                    raise InvalidInput(
                        "dates are missing: give a dates field (one ISO date per date)"
                    )
        scene = SceneOptions(
            tile_size=self.scene_tile(served, options.tile_size, max(1, len(dates))),
            overlap=options.overlap,
            uint8=options.uint8,
            compress=options.compress,
            dates=dates,
            min_confidence=options.min_confidence,
            chip_stride=options.chip_stride,
        )
        task_for(manifest).check_scene_options(manifest, scene)
        return SceneRequest(served, list(parts), scene, self.scene_limits, infos[0].georef, plan)

    def scene_tile(self, served: ServedModel, asked: int | None, dates: int) -> int | None:
        """The tile size a scene job runs with, within one request's memory budget.

        A tile size the client asked for that does not fit is refused (413, naming
        the largest that does); the model's default tile shrinks to fit instead.
        Returns None to keep the model's default.
        """
        budget = self.budget
        tile = asked or served.task.scene_tile(served.manifest)
        multiple = served.task.tile_step(served.manifest)

        def need(side: int) -> int:
            return scene_bytes(served, side, dates, self.settings.scene_tiles_in_flight)

        if budget.fits(need(tile)):
            return asked
        fits = tile // multiple * multiple
        while fits > multiple and not budget.fits(need(fits)):
            fits -= multiple
        if asked is not None or not budget.fits(need(fits)):
            raise PayloadTooLarge(
                f"tile_size {tile} needs about {need(tile) // 2**20} MiB of memory; the limit per "
                f"job is {budget.per_request // 2**20} MiB (ATTNSERVE_REQUEST_MEMORY_MB): use a "
                f"tile_size of at most {fits}",
                max_tile_size=fits,
            )
        return fits

    async def json(self, served: ServedModel, req: PredictJSON) -> SyncRequest:
        """A JSON body's parcels or image as a synchronous request, its memory reserved."""
        manifest = served.manifest
        s = self.settings
        check_min_confidence(served, req.min_confidence)
        inp: RasterInput | SeriesInput
        if served.task.dated:
            if req.parcels is None:
                raise InvalidInput(f"model {manifest.name} takes parcels (series), not an image")
            inp = series_from_json(req, manifest, s.max_json_items, s.max_dates)
            rows, t = inp.series.shape[:2]
            need = stack_bytes(served, rows, t, 4)
            what = f"{rows} series of {t} dates"
        else:
            if req.image is None:
                raise InvalidInput(f"model {manifest.name} takes an image, not parcels")
            inp = image_from_json(req, manifest, JSON_IMAGE_MAX_PIXELS)
            bands, h, w = inp.data.shape
            need = image_bytes(served, h * w, bands, 4)
            what = f"a {w}x{h} image"
        held = await _holding(self.budget.reserve, need, what)
        return SyncRequest(served, inp, held)
