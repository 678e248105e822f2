"""Unflagged clouds for any band set: bright, flat spectra blended into random dates.

A cloud mask misses some clouds; the dates they cover stay valid but carry the
cloud's spectrum, not the field's. Training on series with such dates injected
teaches the temporal attention to give them little weight, and injecting them
into held-out series measures whether it does.

The cloud spectrum is defined per band from its name, so it works for any
sensor: a reflectance band (anything not named as an index) becomes bright and
nearly flat (reflectance 0.3-0.7, tilted by +-6 % across the band list so that
clouds are not perfectly grey); a spectral index band (NDVI, EVI, NDWI, ...) falls
to about 0, as a flat spectrum has no red edge. Each cloud covers its date at an
opacity of 0.6-1.0, blended linearly with the clear value.
"""

from __future__ import annotations

import numpy as np

from models.data.crops import CropSeries

# Name fragments of spectral index bands: their value under a cloud is ~0, not bright.
INDEX_MARKERS = ("NDVI", "EVI", "NDWI", "NDMI", "NBR", "SAVI", "NDRE", "NDSI", "GCVI", "INDEX")
BRIGHTNESS = (0.3, 0.7)
OPACITY = (0.6, 1.0)
INDEX_UNDER_CLOUD = (-0.05, 0.1)


def is_index_band(name: str) -> bool:
    """Whether band ``name`` is a spectral index (normalised difference and kin)."""
    upper = name.upper()
    return any(marker in upper for marker in INDEX_MARKERS)


def value_scale(series: np.ndarray, valid: np.ndarray) -> float:
    """10000 for values stored x 10000 (reflectance, indices), 1 for values in 0-1 units."""
    values = np.abs(series[valid])
    return 10000.0 if values.size and float(np.percentile(values, 99)) > 2.0 else 1.0


def inject_clouds(
    series: np.ndarray,
    valid: np.ndarray,
    bands: tuple[str, ...] | list[str],
    rng: np.random.Generator,
    probability: float,
    scale: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Cover random valid dates with unflagged clouds.

    Args:
        series: ``(N, T, C)`` clear values (not modified).
        valid: ``(N, T) bool``; only valid dates get clouds, and stay valid.
        bands: the ``C`` band names, to tell reflectance from index bands.
        rng: the generator that picks dates, brightness and opacity.
        probability: chance that a valid date is cloudy.
        scale: what reflectance 1.0 is stored as (see :func:`value_scale`).

    Returns:
        ``(N, T, C) float32`` series with clouds and ``(N, T) bool`` cloudy dates.
    """
    n, t, c = series.shape
    cloudy = valid & (rng.uniform(size=(n, t)) < probability)
    index = np.array([is_index_band(b) for b in bands])
    brightness = rng.uniform(*BRIGHTNESS, size=(n, t, 1))
    tilt = np.linspace(1.06, 0.94, c)[None, None, :]
    bright = brightness * tilt + rng.normal(0, 0.015, size=(n, t, c))
    flat_index = rng.uniform(*INDEX_UNDER_CLOUD, size=(n, t, c))
    cloud = np.where(index[None, None, :], flat_index, bright) * scale
    opacity = rng.uniform(*OPACITY, size=(n, t, 1))
    covered = opacity * cloud + (1 - opacity) * series
    out = np.where(cloudy[..., None], covered, series)
    return out.astype(np.float32), cloudy


def with_clouds(data: CropSeries, seed: int, probability: float) -> CropSeries:
    """``data`` with seeded unflagged clouds on a ``probability`` share of valid dates."""
    series, cloudy = inject_clouds(
        data.series,
        data.valid,
        data.bands,
        np.random.default_rng(seed),
        probability,
        value_scale(data.series, data.valid),
    )
    return CropSeries(
        series=series,
        days=data.days,
        valid=data.valid,
        labels=data.labels,
        class_names=data.class_names,
        bands=data.bands,
        cloudy=cloudy,
        lonlat=data.lonlat,
    )
