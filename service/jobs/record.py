"""A stored job's metadata, its id and its owner tag."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import time
from dataclasses import InitVar, asdict, dataclass, field
from typing import Any

from service.errors import NotFound

STATES = ("queued", "running", "done", "failed", "cancelled")
FINAL_STATES = frozenset({"done", "failed", "cancelled"})
_ID = re.compile(r"^[A-Za-z0-9_-]{24}$")


def is_job_id(text: str) -> bool:
    """Whether ``text`` has the shape of a job id."""
    return bool(_ID.match(text))


def new_id() -> str:
    """A fresh unguessable job id: 96 random bits, then its creation time.

    The time (milliseconds, the last 8 characters) lets another replica tell
    a job that is still being written behind from one that does not exist
    (see :func:`id_age_s`). The random part comes first, so shards stay even.
    """
    stamp = int(time.time() * 1000).to_bytes(6, "big")
    return secrets.token_urlsafe(12) + base64.urlsafe_b64encode(stamp).decode()


def id_age_s(job_id: str) -> float | None:
    """Seconds since a job id was made, from the time it carries (None: not an id).

    Replicas' clocks may differ a little, so the age can be slightly negative.
    Ids made before ids carried a time decode to a random one, almost never
    near now.
    """
    if not _ID.match(job_id):
        return None
    made = int.from_bytes(base64.urlsafe_b64decode(job_id[-8:]), "big") / 1000
    return time.time() - made


def owner_of(api_key: str | None) -> str | None:
    """The owner tag stored with a job: a hash, never the key itself."""
    if api_key is None:
        return None
    return hashlib.sha256(api_key.encode()).hexdigest()[:32]


@dataclass
class Layer:
    """One stored result of a job: an array, a band of a COG, or values kept inline.

    Attributes:
        name: the output's name (unique in the job).
        role: ``prediction`` or ``attention``.
        kind: what the values are (``probability``, ``class``, ``spatial``, ...).
        shape: the layer's shape on the job's grid.
        dtype: the stored values' dtype.
        statistics: ``min``, ``max``, ``mean`` and ``valid_fraction``.
        level: the decoder level of an attention gate.
        description: what the output shows, in words.
        bands: the input bands a per-band layer weighs.
        channels: the names of a channel attention layer's weights (not input bands).
        heads: attention heads of a multi-head layer, stored first ``(heads, ...)``.
        stride: a coarse map's stride (kept at its own resolution).
        classes: the class names of class and probability layers.
        nodata: the class map's value where there is no class.
        min_confidence: the lowest top probability that gets a class (class maps).
        class_statistics: per class of a class map, its pixels, share of the
            classified pixels and area in m² (where georeferenced).
        class_colors: ``#rrggbb`` per class of a class map, as its model names them.
        dates: ISO dates of per-date layers.
        values: the values of a layer kept inline.
        mask: the layer whose NaN masks an upsampled coarse map.
        days: day of year of each date (for the model; not served).
        storage: ``cog`` or ``inline``; None for an array of its own.
        file: the COG holding the layer.
        band: the layer's band in its COG (None: all of it).
    """

    name: str
    role: str
    kind: str
    shape: list[int]
    dtype: str
    statistics: dict[str, float | None] | None = None
    level: int | None = None
    description: str | None = None
    bands: list[str] | None = None
    channels: list[str] | None = None
    heads: int | None = None
    stride: int | None = None
    classes: list[str] | None = None
    nodata: int | None = None
    min_confidence: float | None = None
    class_statistics: list[dict[str, Any]] | None = None
    class_colors: list[str] | None = None
    dates: list[str] | None = None
    values: list[float] | None = None
    mask: str | None = None
    days: list[float] | None = None
    storage: str | None = None
    file: str | None = None
    band: int | None = None

    def public(self) -> dict[str, Any]:
        """The layer as a job's answers show it: no storage details, nothing unset."""
        entry: dict[str, Any] = {}
        for name in PUBLIC_LAYER_FIELDS:
            value = getattr(self, name)
            if value is not None:
                entry[name] = value
        return entry


# What clients see of a layer, in this order; the rest says where and how it is stored.
PUBLIC_LAYER_FIELDS = (
    "name",
    "role",
    "kind",
    "shape",
    "dtype",
    "statistics",
    "level",
    "description",
    "bands",
    "channels",
    "heads",
    "stride",
    "classes",
    "nodata",
    "min_confidence",
    "class_statistics",
    "class_colors",
    "dates",
    "values",
)


@dataclass
class Series:
    """The dates of a temporal job's inputs, its classes and, for series jobs, the items' ids.

    Attributes:
        dates: ISO dates of the inputs, in order.
        days: day of year of each date (counted from 1 January of the first year).
        classes: the model's class names.
        ids: the id of each series (series jobs; None for rasters).
    """

    dates: list[str] = field(default_factory=list)
    days: list[float] = field(default_factory=list)
    classes: list[str] = field(default_factory=list)
    ids: list[str] | None = None


@dataclass
class Tiling:
    """How a scene job was cut into tiles."""

    tile_size: int
    overlap: int
    tiles: int


@dataclass
class ModelGrid:
    """An input's size on its model's grid."""

    width: int
    height: int


@dataclass
class ResamplingSummary:
    """Whether a raster job ran at its model's ground resolution, and how, as clients see it.

    Attributes:
        applied: whether the input ran on the model's grid.
        model_gsd_m: the model's metres per pixel, if it states them.
        input_gsd_m: the input's metres per pixel ``(x, y)``, if known.
        tolerance: largest factor between the resolutions run as sent.
        reason: why it was not resampled, when not.
        factor: model grid size over input size ``(x, y)`` (applied only).
        model_grid: the input's size on the model's grid (applied only).
        method: imagery resampling to the model's grid (applied only).
        method_back: output resampling back to the input's grid (applied only).
        input_gsd_from: ``"request"`` where ``input_gsd_m`` is the request's ``gsd_m``
            for an image without a georeference (absent where measured).
    """

    applied: bool
    model_gsd_m: float | None = None
    input_gsd_m: list[float] | None = None
    tolerance: float = 1.25
    reason: str | None = None
    factor: list[float] | None = None
    model_grid: ModelGrid | None = None
    method: str | None = None
    method_back: str | None = None
    input_gsd_from: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.model_grid, dict):  # read back from JSON
            self.model_grid = ModelGrid(**self.model_grid)

    def to_json(self) -> dict[str, Any]:
        """The summary as a job's answer shows it: what was not decided is left out."""
        body = asdict(self)
        for name in ("reason", "factor", "model_grid", "method", "method_back", "input_gsd_from"):
            if body[name] is None:
                del body[name]
        return body


@dataclass
class JobRecord:
    """A stored job's metadata (its arrays live beside it).

    Attributes:
        id: unguessable job id.
        model: ``{"name", "version", "task"}``.
        kind: ``raster`` or ``series``.
        created: epoch seconds.
        expires: epoch seconds.
        layers: one per stored result (plain dicts, as read from JSON, become
            :class:`Layer`).
        georef: the input's georeference (rasters).
        owner: hash of the API key that made it, or None.
        packed: array name -> byte offset of its ``.npy`` image in ``arrays.npk``.
        series: dates, classes and item ids of temporal jobs.
        tiling: how a scene job was tiled.
        resampling: how a raster job went to its model's ground resolution.
        runs: scene runs started and not (yet) ended cleanly.
        resumed: times a scene job was queued again after a server stopped.
        eta_s: a running scene job's estimated seconds left.
        seconds: how long a finished scene job ran.
        extra: only when read back: the one dict that records written by
            earlier versions kept the fields above in.
    """

    id: str
    model: dict[str, str]
    kind: str
    created: float
    expires: float
    layers: list[Layer] = field(default_factory=list)
    georef: dict[str, Any] | None = None
    owner: str | None = None
    state: str = "done"
    progress: dict[str, Any] = field(default_factory=dict)
    error: dict[str, str] | None = None
    params: dict[str, Any] = field(default_factory=dict)
    updated: float = 0.0
    packed: dict[str, int] = field(default_factory=dict)
    series: Series | None = None
    tiling: Tiling | None = None
    resampling: ResamplingSummary | None = None
    runs: int = 0
    resumed: int = 0
    eta_s: float | None = None
    seconds: float | None = None
    extra: InitVar[dict[str, Any] | None] = None

    def __post_init__(self, extra: dict[str, Any] | None) -> None:
        # Records read back from their JSON carry their parts as dicts.
        self.layers = [la if isinstance(la, Layer) else Layer(**la) for la in self.layers]
        if isinstance(self.series, dict):
            self.series = Series(**self.series)
        if isinstance(self.tiling, dict):
            self.tiling = Tiling(**self.tiling)
        if isinstance(self.resampling, dict):
            self.resampling = ResamplingSummary(**self.resampling)
        if extra:
            # Jobs stored before these fields were typed still answer until they expire.
            self._from_extra(extra)

    def _from_extra(self, extra: dict[str, Any]) -> None:
        if any(key in extra for key in ("dates", "days", "classes", "ids")):
            self.series = Series(
                dates=list(extra.get("dates") or []),
                days=[float(d) for d in extra.get("days") or []],
                classes=list(extra.get("classes") or []),
                ids=extra.get("ids"),
            )
        if extra.get("tiling"):
            self.tiling = Tiling(**extra["tiling"])
        if extra.get("resampling"):
            self.resampling = ResamplingSummary(**extra["resampling"])
        self.runs = int(extra.get("runs", 0))
        self.resumed = int(extra.get("resumed", 0))
        self.eta_s = extra.get("eta_s")
        self.seconds = extra.get("seconds")

    @property
    def finished(self) -> bool:
        """Whether the job reached a final state."""
        return self.state in FINAL_STATES

    def layer(self, name: str) -> Layer:
        """The layer called ``name``."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise NotFound(f"job has no layer {name!r}; layers: {', '.join(self.layer_names())}")

    def layer_names(self) -> list[str]:
        """Names of the stored layers."""
        return [layer.name for layer in self.layers]
