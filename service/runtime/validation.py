"""Checks of user input against a model's manifest, with messages that name the problem."""

from __future__ import annotations

import numpy as np

from service.errors import UnsupportedRaster
from service.runtime.manifest import Manifest
from service.runtime.tasks import inference_task


def check_layout(
    manifest: Manifest, bands: int, dtype: str, *, dates: int = 1, limit: int | None = None
) -> None:
    """Refuse a raster whose band count or dtype the model cannot take.

    Called right after a raster is opened, before any pixel is read.

    Args:
        manifest: the model's manifest.
        bands: bands per date in the input.
        dtype: the input's numpy dtype name.
        dates: how many dates the bands cover (temporal models).
        limit: the server's most dates per request, if lower than the model's.
    """
    spec = manifest.input
    expected = len(spec.bands)
    dated = inference_task(manifest).dated
    # A dtype that is no imagery at all (complex SAR, say) is the first thing to
    # name: its band count is beside the point.
    if not _known_dtype(dtype) or np.dtype(dtype).kind not in "uif":
        raise UnsupportedRaster(
            f"dtype {dtype} is not supported by model {manifest.name} (complex or non-numeric "
            f"values are not imagery it takes); it takes {', '.join(spec.accepted_dtypes)}",
            accepted_dtypes=spec.accepted_dtypes,
            got_dtype=dtype,
        )
    if bands != expected:
        per = " per date" if dated else ""
        raise UnsupportedRaster(
            f"band count {bands}{per} does not match model {manifest.name}, which takes "
            f"{expected} bands ({', '.join(spec.bands)})",
            expected_bands=spec.bands,
            got_bands=bands,
        )
    if dtype not in spec.accepted_dtypes:
        raise UnsupportedRaster(
            f"dtype {dtype} is not supported by model {manifest.name}; "
            f"it takes {', '.join(spec.accepted_dtypes)} with values in "
            f"{_fmt_range(spec.value_range)} ({spec.units})",
            accepted_dtypes=spec.accepted_dtypes,
            got_dtype=dtype,
        )
    if dated:
        lo, hi = spec.min_dates or 1, spec.max_dates or 10_000
        if not lo <= dates <= hi:
            raise UnsupportedRaster(
                f"{dates} dates given; model {manifest.name} takes {lo} to {hi}",
                got_dates=dates,
            )
        if limit is not None and dates > limit:
            raise UnsupportedRaster(
                f"{dates} dates given; this server takes at most {limit} per request "
                "(ATTNSERVE_MAX_DATES)",
                got_dates=dates,
            )


def check_values(manifest: Manifest, values: np.ndarray) -> None:
    """Refuse values on the wrong scale for the model (e.g. 0-1 reflectance for x10000).

    Args:
        manifest: the model's manifest.
        values: the valid input values, any shape (NaN and nodata already removed).
    """
    if values.size == 0:
        raise UnsupportedRaster("the input has no valid pixels (all nodata)")
    if values.dtype.kind == "f" and not np.isfinite(values).all():
        raise UnsupportedRaster("the input contains NaN or infinite values outside its nodata mask")
    lo, hi = manifest.input.value_range
    span = hi - lo
    vmin, vmax = float(values.min()), float(values.max())
    # Bright targets (clouds, snow) legitimately exceed the nominal range, and
    # atmospheric correction can leave small negatives, hence the margins.
    if vmin < lo - 0.25 * span or vmax > hi + 1.0 * span:
        raise UnsupportedRaster(
            f"values range from {vmin:g} to {vmax:g}, far outside {_fmt_range([lo, hi])} "
            f"({manifest.input.units}) that model {manifest.name} expects",
            got_range=[vmin, vmax],
        )
    if span >= 100 and vmax <= span / 100 and vmax > 0:
        raise UnsupportedRaster(
            f"values range from {vmin:g} to {vmax:g}: they look scaled to 0-1, but model "
            f"{manifest.name} expects {_fmt_range([lo, hi])} ({manifest.input.units})",
            got_range=[vmin, vmax],
        )


def _known_dtype(name: str) -> bool:
    try:
        np.dtype(name)
    except TypeError:
        return False
    return True


def _fmt_range(bounds: list[float]) -> str:
    return f"{bounds[0]:g}-{bounds[1]:g}"
