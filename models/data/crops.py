"""Seeded synthetic Sentinel-2 crop time series with irregular dates and clouds.

Each parcel follows its class's phenology: a double-logistic green-cover curve
(green-up and senescence dates, peak cover) with per-parcel jitter. Cover mixes a
vegetation spectrum with the parcel's own soil spectrum, so red falls and NIR
rises as the crop greens up, and SWIR follows soil and dry matter. Dates are
irregular and their number varies per parcel (padding is marked ``valid=False``).
Clouds are bright, flat, partly transparent spectra blended into the clear signal;
some are flagged in ``valid`` (as a cloud mask would), the rest are not, and
``cloudy`` records every cloudy date so metrics can see where attention went.

Only numpy is used: the data can be made without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BANDS: tuple[str, ...] = ("B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B11", "B12")
"""Sentinel-2 bands, in the order the series' last axis holds them."""

REFLECTANCE_SCALE = 10000.0

# Typical surface reflectance (0-1) of green vegetation, bare soil and dry
# (senescent) matter in each of the bands above.
_VEGETATION = np.array([0.03, 0.07, 0.035, 0.11, 0.30, 0.38, 0.42, 0.44, 0.21, 0.10])
_SOIL = np.array([0.07, 0.10, 0.13, 0.16, 0.18, 0.20, 0.22, 0.23, 0.31, 0.26])
_DRY = np.array([0.06, 0.09, 0.12, 0.16, 0.21, 0.24, 0.27, 0.29, 0.36, 0.28])


@dataclass(frozen=True)
class Phenology:
    """One crop class's green-cover curve: days of year, cover fractions in [0, 1].

    ``regrowth`` > 0 adds a second, later green-up (e.g. a cut meadow regrowing).
    """

    name: str
    green_up: float
    senescence: float
    peak: float
    base: float
    rate_up: float
    rate_down: float
    dry_after: float
    regrowth: float = 0.0
    regrowth_day: float = 0.0


CLASSES: tuple[Phenology, ...] = (
    # Sown in autumn, greens up early in spring, harvested in early summer.
    Phenology("winter_cereal", 75, 185, 0.85, 0.20, 10, 8, 0.7),
    # Sown in spring, grows through summer, harvested in autumn.
    Phenology("maize", 160, 265, 0.90, 0.03, 8, 9, 0.5),
    # Spring sown, earlier than maize, shorter season.
    Phenology("spring_cereal", 115, 205, 0.80, 0.05, 8, 7, 0.8),
    # Autumn sown, very early green-up, long full cover, early harvest.
    Phenology("rapeseed", 55, 165, 0.95, 0.35, 12, 6, 0.6),
    # Permanent cover that is mown in early summer and grows back.
    Phenology("grassland", 70, 170, 0.85, 0.45, 15, 4, 0.0, 0.35, 205),
    # Late summer crop with a short, sharp season.
    Phenology("sunflower", 150, 230, 0.75, 0.03, 7, 5, 1.0),
)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CLASSES)


@dataclass(frozen=True)
class CropSeries:
    """A batch of parcel time series, padded to a common length ``T``.

    Attributes:
        series: ``(N, T, C) float32`` reflectance x 10000, zero on padding.
        days: ``(N, T) float32`` day of year (days since 1 January of the first
            year; may exceed 365), zero on padding.
        valid: ``(N, T) bool``, False on padding and on flagged clouds.
        labels: ``(N,) int64`` class indices into ``class_names``.
        class_names: the class names.
        bands: band names of the last axis of ``series``.
        cloudy: ``(N, T) bool`` True on every cloudy date, flagged or not, or
            None where it is unknown (real data).
        lonlat: ``(N, 2) float64`` longitude and latitude of each sample, or
            None where the data set does not say (used to hold out by location).
    """

    series: np.ndarray
    days: np.ndarray
    valid: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    bands: tuple[str, ...] = BANDS
    cloudy: np.ndarray | None = None
    lonlat: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: np.ndarray) -> CropSeries:
        """The samples at ``index`` (an integer or boolean array)."""
        return CropSeries(
            series=self.series[index],
            days=self.days[index],
            valid=self.valid[index],
            labels=self.labels[index],
            class_names=self.class_names,
            bands=self.bands,
            cloudy=None if self.cloudy is None else self.cloudy[index],
            lonlat=None if self.lonlat is None else self.lonlat[index],
        )


def _logistic(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)))


def _cover(cls: Phenology, days: np.ndarray, jitter: dict[str, np.ndarray]) -> np.ndarray:
    """Green cover ``(n, T)`` of parcels of class ``cls`` on ``days`` ``(n, T)``."""
    up = cls.green_up + jitter["shift"] + jitter["up"]
    down = cls.senescence + jitter["shift"] + jitter["down"]
    peak = np.clip(cls.peak + jitter["peak"], 0.3, 1.0)
    base = np.clip(cls.base + jitter["base"], 0.0, 0.6)
    season = _logistic((days - up[:, None]) / cls.rate_up) - _logistic(
        (days - down[:, None]) / cls.rate_down
    )
    cover = base[:, None] + (peak - base)[:, None] * season
    if cls.regrowth > 0:
        regrow_day = cls.regrowth_day + jitter["shift"] + jitter["down"]
        cover = cover + cls.regrowth * _logistic((days - regrow_day[:, None]) / 10.0)
    return np.clip(cover, 0.0, 1.0)


def make_crop_series(
    n: int,
    *,
    seed: int,
    min_dates: int = 12,
    max_dates: int = 40,
    cloud_probability: float = 0.3,
    flagged_fraction: float = 0.5,
    noise: float = 0.02,
) -> CropSeries:
    """Make ``n`` seeded synthetic parcels with irregular dates and clouds.

    Args:
        n: number of parcels; classes are drawn uniformly.
        seed: seed of the generator; the same seed gives the same data.
        min_dates: fewest acquisitions of a parcel.
        max_dates: most acquisitions of a parcel, and the padded length ``T``.
        cloud_probability: chance that an acquisition is cloudy.
        flagged_fraction: share of cloudy dates marked ``valid=False``; the
            others stay valid, as clouds a mask missed.
        noise: relative sensor noise (standard deviation, fraction of signal).

    Returns:
        The series, padded to ``max_dates``, with their ``cloudy`` dates.
    """
    if not 1 <= min_dates <= max_dates:
        raise ValueError(f"need 1 <= min_dates <= max_dates, got {min_dates}, {max_dates}")
    rng = np.random.default_rng(seed)
    T, C = max_dates, len(BANDS)
    labels = rng.integers(0, len(CLASSES), size=n)
    counts = rng.integers(min_dates, max_dates + 1, size=n)
    positions = np.arange(T)[None, :]
    present = positions < counts[:, None]

    # Irregular acquisitions over a season that may run into the next year:
    # sorted uniform days between a per-parcel start and end.
    start = rng.uniform(0, 40, size=n)
    end = rng.uniform(320, 400, size=n)
    raw = np.sort(np.where(present, rng.uniform(0, 1, size=(n, T)), np.inf), axis=1)
    days = np.where(present, start[:, None] + raw * (end - start)[:, None], 0.0)
    days = np.round(days)

    jitter = {
        "shift": rng.normal(0, 8, size=n),
        "up": rng.normal(0, 5, size=n),
        "down": rng.normal(0, 5, size=n),
        "peak": rng.normal(0, 0.06, size=n),
        "base": rng.normal(0, 0.04, size=n),
    }
    cover = np.zeros((n, T))
    dry = np.zeros((n, T))
    for k, cls in enumerate(CLASSES):
        rows = labels == k
        if not rows.any():
            continue
        part = {key: value[rows] for key, value in jitter.items()}
        cover[rows] = _cover(cls, days[rows], part)
        # Dry matter stays on the field after senescence until harvest.
        after = _logistic((days[rows] - (cls.senescence + part["shift"])[:, None]) / 6.0)
        dry[rows] = cls.dry_after * after * (1 - cover[rows])

    soil = _SOIL[None, :] * rng.uniform(0.75, 1.3, size=(n, 1))
    soil = soil + rng.normal(0, 0.01, size=(n, C))
    veg = _VEGETATION[None, :] * rng.uniform(0.9, 1.1, size=(n, 1))
    clear = (
        cover[..., None] * veg[:, None, :]
        + dry[..., None] * _DRY[None, None, :]
        + (1 - cover - dry)[..., None] * soil[:, None, :]
    )
    clear = clear * (1 + rng.normal(0, noise, size=clear.shape)) + rng.normal(
        0, 0.003, size=clear.shape
    )

    # Clouds: bright, nearly flat spectra (a little brighter in the blue), blended
    # with the ground by a per-date opacity so thin clouds stay partly clear.
    cloudy = present & (rng.uniform(size=(n, T)) < cloud_probability)
    brightness = rng.uniform(0.35, 0.75, size=(n, T, 1))
    tilt = np.linspace(1.08, 0.92, C)[None, None, :]
    cloud = brightness * tilt + rng.normal(0, 0.01, size=(n, T, C))
    opacity = rng.uniform(0.5, 1.0, size=(n, T, 1))
    observed = np.where(cloudy[..., None], opacity * cloud + (1 - opacity) * clear, clear)
    flagged = cloudy & (rng.uniform(size=(n, T)) < flagged_fraction)
    # A parcel keeps at least one valid date, as the server requires.
    first = np.zeros_like(flagged)
    first[:, 0] = True
    flagged &= ~(first & (flagged.sum(axis=1, keepdims=True) == counts[:, None]))

    series = np.where(present[..., None], np.clip(observed, 0, 1.5) * REFLECTANCE_SCALE, 0.0)
    return CropSeries(
        series=series.astype(np.float32),
        days=days.astype(np.float32),
        valid=present & ~flagged,
        labels=labels.astype(np.int64),
        class_names=CLASS_NAMES,
        bands=BANDS,
        cloudy=cloudy,
    )
