"""Running a model at the ground sample distance it was trained at.

A model's manifest states the metres per pixel it learned (``input.gsd_m``). An
input whose pixels are more than a set factor finer or coarser is resampled to
that resolution before inference, and every output is resampled back, so
answers keep the input's CRS, transform and size (kernels in
:mod:`service.raster.kernels`, ground resolution in :mod:`service.raster.gsd`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader
from rasterio.windows import Window

from service.errors import InvalidRaster, PayloadTooLarge
from service.raster.decode import UNREADABLE, RasterLimits
from service.raster.georef import Georeference
from service.raster.gsd import ground_resolution
from service.raster.kernels import Kernel, axis_kernel, finite_mask, resample_masked
from service.runtime.manifest import Manifest
from service.runtime.segmentation import RasterOutputs, upsample

NOT_GEOREFERENCED = "not georeferenced: run as is"


@dataclass(frozen=True)
class Resampling:
    """What is done to an input's resolution for a model, and how to do it.

    Attributes:
        applied: whether the input runs on the model's grid.
        reason: why not, when not.
        input_gsd_m: ground metres per pixel ``(x, y)`` of the input, if known.
        model_gsd_m: the model's ``input.gsd_m``, if it states one.
        width, height: the input's size.
        model_width, model_height: its size on the model's grid.
        method: imagery resampling to the model's grid (``average`` where an
            axis shrinks, ``bilinear`` where it grows).
        tolerance: largest factor between the resolutions run as is.
    """

    applied: bool
    reason: str | None
    input_gsd_m: tuple[float, float] | None
    model_gsd_m: float | None
    width: int
    height: int
    model_width: int
    model_height: int
    method: str = "none"
    tolerance: float = 1.25
    stated: bool = False

    @property
    def model_pixels(self) -> int:
        """Pixels the model runs on."""
        return self.model_width * self.model_height

    def to_json(self) -> dict[str, Any]:
        """What a client is told (also kept with scene jobs to run them)."""
        body: dict[str, Any] = {
            "applied": self.applied,
            "model_gsd_m": self.model_gsd_m,
            "input_gsd_m": list(self.input_gsd_m) if self.input_gsd_m else None,
            "tolerance": self.tolerance,
        }
        if self.stated:
            body["input_gsd_from"] = "request"
        if self.reason:
            body["reason"] = self.reason
        if self.applied:
            body["factor"] = [self.model_width / self.width, self.model_height / self.height]
            body["model_grid"] = {"width": self.model_width, "height": self.model_height}
            body["method"] = self.method
            body["method_back"] = "bilinear"
        return body

    @classmethod
    def from_json(cls, data: dict[str, Any], width: int, height: int) -> Resampling:
        """Inverse of :meth:`to_json` for an input of ``width x height``."""
        grid = data.get("model_grid") or {"width": width, "height": height}
        gsd = data.get("input_gsd_m")
        return cls(
            applied=bool(data.get("applied")),
            reason=data.get("reason"),
            input_gsd_m=(float(gsd[0]), float(gsd[1])) if gsd else None,
            model_gsd_m=data.get("model_gsd_m"),
            width=width,
            height=height,
            model_width=int(grid["width"]),
            model_height=int(grid["height"]),
            method=str(data.get("method", "none")),
            tolerance=float(data.get("tolerance", 1.25)),
            stated=data.get("input_gsd_from") == "request",
        )

    def _forward(self) -> tuple[Kernel, Kernel]:
        return (
            axis_kernel(self.height, self.model_height, self.method),
            axis_kernel(self.width, self.model_width, self.method),
        )

    def to_model(
        self, data: np.ndarray, valid: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """``(C, H, W)`` imagery and its validity on the model's grid.

        A model pixel is valid where at least half of its weight came from
        valid input pixels; NaN counts as no data.
        """
        finite = finite_mask(data)
        if finite is not None:
            valid = finite if valid is None else valid & finite
        rows, cols = self._forward()
        out, weight = resample_masked(data, valid, rows, cols)
        return out, None if weight is None else weight >= 0.5

    def to_input(self, values: np.ndarray) -> np.ndarray:
        """``(L, h, w)`` outputs on the model's grid, bilinearly on the input's; NaN aware."""
        rows = axis_kernel(self.model_height, self.height, "bilinear")
        cols = axis_kernel(self.model_width, self.width, "bilinear")
        out, _ = resample_masked(np.nan_to_num(values), finite_mask(values), rows, cols)
        return out

    def outputs_to_input(
        self, outputs: RasterOutputs, manifest: Manifest, valid: np.ndarray | None
    ) -> RasterOutputs:
        """A segmentation model's outputs on the model's grid, on the input's grid.

        Coarse maps (``stride > 1``) are upsampled to the model's grid first:
        on the input's grid their stride is no longer a whole number of pixels,
        so they come back at full resolution. Where the input has no data
        (``valid`` False), every map is NaN.
        """
        layers: dict[str, np.ndarray] = {}
        mask: np.ndarray | None = None
        for spec in manifest.outputs:
            array = outputs.layers[spec.name]
            if array.ndim == 3 and spec.stride == 1 and mask is None:
                mask = np.isnan(array[0])
        names: list[tuple[str, int]] = []
        maps: list[np.ndarray] = []
        for spec in manifest.outputs:
            array = outputs.layers[spec.name]
            if array.ndim != 3:
                layers[spec.name] = array
                continue
            if spec.stride > 1:  # every head of a multi-head map
                fine = np.stack(
                    [upsample(a, spec.stride, self.model_height, self.model_width) for a in array]
                )
                if mask is not None:
                    fine[:, mask] = np.nan
                array = fine
            # Every band: class probabilities have one per class.
            names.append((spec.name, array.shape[0]))
            maps.extend(array)
        if maps:
            # One pass for all maps: they share their nodata, so their weights.
            back = self.to_input(np.stack(maps))
            if valid is not None:
                back[:, ~valid] = np.nan
            first = 0
            for name, bands in names:
                layers[name] = back[first : first + bands]
                first += bands
        return RasterOutputs(layers=layers, valid=valid)


# Inputs further than this from a model's gsd_m are not resampled (Settings.resample_max_factor).
DEFAULT_MAX_FACTOR = 8.0


def plan_resampling(
    georef: Georeference | None,
    model_gsd_m: float | None,
    tolerance: float,
    max_factor: float = DEFAULT_MAX_FACTOR,
    stated_gsd_m: float | None = None,
) -> Resampling:
    """Decide whether an input runs on the model's grid, and the grid's size.

    It does when the model states its ``gsd_m`` and the input's ground
    resolution differs from it by more than ``tolerance`` along either axis, but
    by no more than ``max_factor``: imagery that far from the model's resolution
    (a 300 m Landsat scene for a 0.5 m building model) would be invented detail
    or lost detail either way, so it runs as sent and the answer says so.

    ``stated_gsd_m`` is the client's word for the metres per pixel of an input
    without a usable georeference (a plain PNG or JPEG); a georeference, where
    there is one, wins.
    """
    width = georef.width if georef else 0
    height = georef.height if georef else 0
    gsd = ground_resolution(georef)
    stated = gsd is None and stated_gsd_m is not None and georef is not None
    if stated and stated_gsd_m is not None:
        gsd = (stated_gsd_m, stated_gsd_m)

    def as_is(reason: str, gsd: tuple[float, float] | None = None) -> Resampling:
        return Resampling(
            False,
            reason,
            gsd,
            model_gsd_m,
            width,
            height,
            width,
            height,
            "none",
            tolerance,
            stated and gsd is not None,
        )

    if model_gsd_m is None:
        return as_is("the model states no ground sample distance (gsd_m): run as is")
    if gsd is None or georef is None:
        return as_is(NOT_GEOREFERENCED)
    fx, fy = gsd[0] / model_gsd_m, gsd[1] / model_gsd_m
    worst = max(fx, 1 / fx, fy, 1 / fy)
    if worst <= tolerance:
        return as_is(f"within {tolerance:g}x of the model's resolution: run as is", gsd)
    if worst > max_factor:
        return as_is(
            f"{worst:.3g}x from the model's {model_gsd_m:g} m per pixel, more than the "
            f"{max_factor:g}x the server resamples: run as is, at a resolution the model "
            "was not trained for, so expect poor results",
            gsd,
        )
    model_width = max(1, round(width * fx))
    model_height = max(1, round(height * fy))
    shrinks = (model_width < width, model_height < height)
    method = "average" if all(shrinks) else "bilinear" if not any(shrinks) else "average+bilinear"
    return Resampling(
        True,
        None,
        gsd,
        model_gsd_m,
        width,
        height,
        model_width,
        model_height,
        method,
        tolerance,
        stated,
    )


def check_grid(plan: Resampling, limits: RasterLimits) -> None:
    """Refuse an input whose model grid would be over the largest raster processed (413).

    A 300 m Landsat image for a 0.5 m model would grow 600 times along each
    axis: refused, naming both resolutions, rather than run at a resolution the
    model was not trained for.
    """
    if not plan.applied or plan.model_pixels <= limits.max_pixels:
        return
    gsd = plan.input_gsd_m or (0.0, 0.0)
    raise PayloadTooLarge(
        f"at the model's {plan.model_gsd_m:g} m per pixel, this {plan.width}x{plan.height} image "
        f"of {gsd[0]:.3g} x {gsd[1]:.3g} m pixels would become {plan.model_width}x"
        f"{plan.model_height} pixels; the limit is {limits.max_pixels} pixels. Send imagery "
        "nearer the model's resolution, or a smaller area",
        width=plan.model_width,
        height=plan.model_height,
    )


class ModelGridSource:
    """Windows of an open scene, read on the model's grid (see :class:`Resampling`).

    Each window is resampled from the input pixels its kernel reaches, with the
    whole image's weights: tiles agree with a whole-image resampling.
    """

    def __init__(self, dataset: DatasetReader, plan: Resampling, all_valid: bool) -> None:
        self.dataset = dataset
        self.all_valid = all_valid
        self.rows, self.cols = plan._forward()

    def read(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """Model-grid rows ``[y0, y1)``, columns ``[x0, x1)``: ``(C, h, w)`` float32, validity."""
        ridx, rw = self.rows[0][y0:y1], self.rows[1][y0:y1]
        cidx, cw = self.cols[0][x0:x1], self.cols[1][x0:x1]
        top, bottom = int(ridx.min()), int(ridx.max()) + 1
        left, right = int(cidx.min()), int(cidx.max()) + 1
        window = Window(left, top, right - left, bottom - top)
        try:
            data = self.dataset.read(window=window)
            valid = None if self.all_valid else self.dataset.dataset_mask(window=window) > 0
        except RasterioError:
            raise InvalidRaster(UNREADABLE) from None
        finite = finite_mask(data)
        if finite is not None:
            valid = finite if valid is None else valid & finite
        out, weight = resample_masked(data, valid, (ridx - top, rw), (cidx - left, cw))
        mask = np.ones(out.shape[1:], bool) if weight is None else weight >= 0.5
        return out, mask


class RowsBack:
    """Outputs on the model's grid, arriving block of rows by block of rows, onto the input's grid.

    Feed blocks in order with :meth:`push`; each call returns the input rows that
    became computable. Only the model rows still needed are kept.
    """

    def __init__(self, plan: Resampling) -> None:
        self.rows = axis_kernel(plan.model_height, plan.height, "bilinear")
        self.cols = axis_kernel(plan.model_width, plan.width, "bilinear")
        self.height = plan.height
        # The last model row each input row needs; rows are emitted in order.
        self._last = self.rows[0].max(axis=1)
        self._buffer: np.ndarray | None = None
        self._top = 0
        self._next = 0

    def push(self, first: int, block: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Add model rows ``(L, n, w)`` from ``first``; the input rows done, ``(row, block)``."""
        if self._buffer is None:
            self._buffer, self._top = block, first
        else:
            if first != self._top + self._buffer.shape[1]:
                raise RuntimeError("model rows must arrive in order")
            self._buffer = np.concatenate([self._buffer, block], axis=1)
        end = self._top + self._buffer.shape[1]
        stop = self._next
        while stop < self.height and self._last[stop] < end:
            stop += 1
        if stop == self._next:
            return []
        idx, weights = self.rows[0][self._next : stop] - self._top, self.rows[1][self._next : stop]
        part = self._buffer
        out, _ = resample_masked(np.nan_to_num(part), finite_mask(part), (idx, weights), self.cols)
        first_out, self._next = self._next, stop
        if stop < self.height:
            keep = int(self.rows[0][stop:, 0].min()) - self._top
            self._buffer = self._buffer[:, keep:]
            self._top += keep
        return [(first_out, out)]


def input_valid_rows(
    dataset: DatasetReader, first: int, count: int, all_valid: bool
) -> np.ndarray | None:
    """``(count, W)`` bool: where rows ``[first, first + count)`` of a scene have data.

    None where every pixel does. NaN counts as no data in float rasters.
    """
    window = Window(0, first, dataset.width, count)
    try:
        valid = None if all_valid else dataset.dataset_mask(window=window) > 0
        if any(np.dtype(d).kind == "f" for d in dataset.dtypes):
            finite = np.isfinite(dataset.read(window=window)).all(axis=0)
            valid = finite if valid is None else valid & finite
    except RasterioError:
        raise InvalidRaster(UNREADABLE) from None
    return valid
