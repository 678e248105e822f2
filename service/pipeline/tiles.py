"""Map tiles of a job's raster layers: which layers there are, and where their pixels come from.

A scene job's layers are bands of its stored COGs, read through the job store.
A synchronous job keeps plain arrays; on its first tile a layer is written as
an in-memory tiled GeoTIFF with overviews, kept (bounded, least recently used
first out) for the tiles that follow.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import rasterio
from rasterio.io import DatasetReader

from service.errors import InvalidInput, NotFound
from service.jobs.rasters import open_raster
from service.jobs.record import JobRecord, Layer
from service.jobs.store import JobStore
from service.pipeline.layers import served_values
from service.raster.gdal_env import HARDENED_GDAL
from service.raster.georef import Georeference
from service.raster.tiles import (
    TILE_SIZE,
    BandStyle,
    TileReader,
    array_raster,
    check_tile,
    class_colour,
    colormap_stops,
    open_bytes,
    rgb_indexes,
    stretch,
    web_mercator_matrices,
)

# Memory, per tile worker, for synchronous jobs' layers written for tiling
# (uint8, deflated: a 1024 x 1024 footprints job's five layers took 2.7 MB).
ARRAY_CACHE_BYTES = 64 * 2**20
# The map layer of a scene job's input image, and how many jobs' display ranges are kept.
INPUT = "input"
MAX_STRETCHES = 1024


@dataclass(frozen=True)
class TileAddress:
    """Tile ``z/x/y`` (XYZ) of a job's map layer ``layer``, as ``fmt`` (png or webp).

    ``bands`` names the input's bands (its model's), to show its red, green and
    blue ones in colour rather than its first three.
    """

    layer: str
    z: int
    x: int
    y: int
    fmt: str
    bands: tuple[str, ...] = ()


@dataclass(frozen=True)
class TileLayer:
    """One map layer of a job: a 2-D layer, or one band of a per-class or per-date layer.

    Attributes:
        name: the map layer's name (``layer`` or ``layer:key``).
        layer: the job's layer it shows.
        index: its band in a 3-D layer (per class or date), None for a 2-D one.
        key: the class or date of that band.
        classes: the class names of a class map (None: continuous 0-1 values).
    """

    name: str
    layer: Layer
    index: int | None = None
    key: str | None = None
    classes: list[str] | None = None

    def style(self, band: int) -> BandStyle:
        """How band ``band`` of its raster is coloured."""
        if self.classes is None:
            return BandStyle(band)
        return BandStyle(band, len(self.classes), tuple(self.layer.class_colors or ()))

    def colour(self, index: int) -> str:
        """``#rrggbb`` of class ``index``: the model's colour, else the palette's."""
        colours = self.layer.class_colors or []
        return colours[index] if index < len(colours) else f"#{class_colour(index)}"

    @property
    def title(self) -> str:
        """What the layer shows, in words."""
        kind = self.layer.kind if self.key is None else f"{self.layer.kind}, {self.key}"
        return f"{self.layer.name} ({kind})"

    def legend(self) -> dict[str, Any]:
        """How its colours read: the class colours, or the 0-1 range of the colour map."""
        if self.layer.storage == "input":
            return {"type": "image", "stretch": "2nd to 98th percentile of each band"}
        if self.classes is not None:
            return {
                "type": "classes",
                "classes": [
                    {"value": i, "name": c, "color": self.colour(i)}
                    for i, c in enumerate(self.classes)
                ],
            }
        return {
            "type": "continuous",
            "colormap": "viridis",
            "range": [0.0, 1.0],
            "stops": colormap_stops(),
        }


def _keys(layer: Layer) -> list[str]:
    count = layer.shape[-3] if len(layer.shape) >= 3 else 0
    if layer.kind == "class_probabilities" and layer.classes and len(layer.classes) == count:
        keys = list(layer.classes)
    elif layer.dates and len(layer.dates) == count:
        keys = list(layer.dates)
    elif layer.heads == count:
        keys = [f"head_{i}" for i in range(count)]
    else:
        keys = [str(i) for i in range(count)]
    return keys if len(set(keys)) == len(keys) else [str(i) for i in range(count)]


def tile_layers(record: JobRecord) -> list[TileLayer]:
    """A job's map layers: every raster layer, per class or per date where it has bands."""
    if record.kind != "raster" or not record.georef or not record.georef.get("crs"):
        return []
    layers = band_layers(record.layers)
    inputs = record.params.get("inputs") or []
    if inputs:  # scene jobs keep their input: a base layer under the results
        shape = [int(record.georef["height"]), int(record.georef["width"])]
        source = Layer(INPUT, "input", "image", shape, "", storage="input", file=str(inputs[0]))
        layers.append(TileLayer(INPUT, source))
    return layers


def band_layers(layers: list[Layer]) -> list[TileLayer]:
    """One entry per raster band of ``layers``, in order: 2-D layers, then each class or date."""
    out: list[TileLayer] = []
    for layer in layers:
        if len(layer.shape) < 2 or layer.storage == "inline":
            continue
        if len(layer.shape) == 2:
            classes = layer.classes if layer.kind == "class" else None
            out.append(TileLayer(layer.name, layer, classes=classes))
            continue
        for i, key in enumerate(_keys(layer)):
            out.append(TileLayer(f"{layer.name}:{key}", layer, index=i, key=key))
    return out


def tile_layer(record: JobRecord, name: str) -> TileLayer:
    """The map layer ``name`` of a job (NotFound naming the ones it has)."""
    layers = tile_layers(record)
    for layer in layers:
        if layer.name == name:
            return layer
    if not layers:
        raise NotFound("this job has no georeferenced raster layers to draw on a map")
    raise NotFound(
        f"job has no map layer {name!r}; map layers: {', '.join(la.name for la in layers)}"
    )


def _bands(record: JobRecord, store: JobStore, layer: Layer) -> np.ndarray:
    """An array layer on the job's grid as ``(n, h, w)``; temporal ones averaged over heads."""
    values = np.asarray(served_values(record, store, layer.name))
    if values.ndim == 4:  # (heads, T, H, W)
        values = values.mean(axis=0)
    return values[None] if values.ndim == 2 else values


class ArrayRasters:
    """Synchronous jobs' layers written as tiled rasters in memory, least recently used out."""

    def __init__(self, max_bytes: int = ARRAY_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._making: dict[tuple[str, str], threading.Lock] = {}

    @property
    def size(self) -> int:
        """Bytes held."""
        with self._lock:
            return sum(len(v) for v in self._items.values())

    def get(self, record: JobRecord, store: JobStore, layer: Layer) -> bytes:
        """The raster of ``layer``, made on first use (once, however many ask at once)."""
        key = (record.id, layer.name)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            making = self._making.setdefault(key, threading.Lock())
        with making:
            with self._lock:
                if key in self._items:
                    return self._items[key]
            georef = Georeference.from_json(record.georef or {})
            data = array_raster(_bands(record, store, layer), georef, layer.kind == "class")
            with self._lock:
                self._items[key] = data
                self._making.pop(key, None)
                total = sum(len(v) for v in self._items.values())
                while total > self.max_bytes and len(self._items) > 1:
                    _, dropped = self._items.popitem(last=False)
                    total -= len(dropped)
        return data

    def forget(self, job_id: str) -> None:
        """Drop a job's rasters (it was deleted)."""
        with self._lock:
            for key in [k for k in self._items if k[0] == job_id]:
                del self._items[key]


class JobTiles:
    """Tiles, TileJSON and WMTS capabilities of jobs' raster layers."""

    def __init__(self, store: JobStore, arrays: ArrayRasters | None = None) -> None:
        self.store = store
        self.arrays = arrays or ArrayRasters()
        self._stretches: OrderedDict[str, tuple[list[int], list[tuple[float, float]]]] = (
            OrderedDict()
        )

    @contextlib.contextmanager
    def _open(self, record: JobRecord, tl: TileLayer) -> Iterator[tuple[DatasetReader, int]]:
        """The raster holding a map layer, and the layer's band in it."""
        layer = tl.layer
        if layer.storage == "input" and layer.file is not None:
            # The input is user data: read under the same GDAL settings as an upload.
            with (
                rasterio.Env(**HARDENED_GDAL),
                open_raster(self.store, record, layer.file, driver="GTiff") as dataset,
            ):
                yield dataset, 1
            return
        if layer.storage == "cog" and layer.file is not None:
            band = (tl.index + 1) if tl.index is not None else (layer.band or 1)
            with open_raster(self.store, record, layer.file, driver="GTiff") as dataset:
                yield dataset, band
            return
        data = self.arrays.get(record, self.store, layer)
        with open_bytes(data) as dataset:
            yield dataset, (tl.index or 0) + 1

    def tile(self, record: JobRecord, at: TileAddress) -> bytes:
        """A tile of a job's map layer as PNG or WEBP."""
        try:
            check_tile(at.z, at.x, at.y)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from exc
        tl = tile_layer(record, at.layer)
        with self._open(record, tl) as (dataset, band):
            reader = TileReader(dataset)
            if tl.layer.storage == "input":
                indexes, ranges = self._stretch(record, dataset, at.bands)
                return reader.rgb_tile(at.z, at.x, at.y, indexes, ranges, at.fmt)
            return reader.tile(at.z, at.x, at.y, tl.style(band), at.fmt)

    def _stretch(
        self, record: JobRecord, dataset: DatasetReader, names: tuple[str, ...]
    ) -> tuple[list[int], list[tuple[float, float]]]:
        """The input's bands shown and their display ranges, worked out once per job."""
        if record.id not in self._stretches:
            indexes = rgb_indexes(names or [d or "" for d in dataset.descriptions], dataset.count)
            self._stretches[record.id] = (indexes, stretch(dataset, indexes))
            while len(self._stretches) > MAX_STRETCHES:
                self._stretches.popitem(last=False)
        return self._stretches[record.id]

    def preview(self, record: JobRecord, name: str, fmt: str, bands: tuple[str, ...] = ()) -> bytes:
        """The whole of map layer ``name`` in the job's own CRS, coloured as its tiles."""
        tl = tile_layer(record, name)
        with self._open(record, tl) as (dataset, band):
            if tl.layer.storage == "input":
                indexes, ranges = self._stretch(record, dataset, bands)
                return TileReader(dataset).rgb_preview(indexes, ranges, fmt)
            return TileReader(dataset).preview(tl.style(band), fmt)

    def extent(self, record: JobRecord, name: str) -> tuple[tuple[float, ...], int, int]:
        """Bounds in EPSG:4326 and the zoom range of a map layer."""
        tl = tile_layer(record, name)
        with self._open(record, tl) as (dataset, _):
            reader = TileReader(dataset)
            return reader.bounds, reader.minzoom, reader.maxzoom

    def tilejson(self, record: JobRecord, name: str, base_url: str, fmt: str) -> dict[str, Any]:
        """TileJSON 3.0.0 of a map layer; ``base_url`` is the server's, without a slash."""
        tl = tile_layer(record, name)
        bounds, minzoom, maxzoom = self.extent(record, name)
        west, south, east, north = bounds
        return {
            "tilejson": "3.0.0",
            "name": tl.name,
            "description": tl.title,
            "version": "1.0.0",
            "scheme": "xyz",
            "tiles": [f"{base_url}/jobs/{record.id}/tiles/{tl.name}/{{z}}/{{x}}/{{y}}.{fmt}"],
            "minzoom": minzoom,
            "maxzoom": maxzoom,
            "bounds": [west, south, east, north],
            "center": [(west + east) / 2, (south + north) / 2, maxzoom],
            "legend": tl.legend(),
        }

    def wmts(self, record: JobRecord, base_url: str) -> str:
        """An OGC WMTS 1.0.0 capabilities document with one layer per map layer."""
        layers = tile_layers(record)
        if not layers:
            raise NotFound("this job has no georeferenced raster layers to draw on a map")
        # Every layer of a job covers its input's grid: one extent serves them all.
        bounds, _, maxzoom = self.extent(record, layers[0].name)
        return capabilities(record.id, layers, bounds, maxzoom, base_url)


def capabilities(
    job_id: str,
    layers: list[TileLayer],
    bounds: tuple[float, ...],
    maxzoom: int,
    base_url: str,
) -> str:
    """The WMTS capabilities XML: RESTful tile URLs on Web Mercator (GoogleMapsCompatible)."""
    west, south, east, north = bounds
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>',
        '<Capabilities xmlns="http://www.opengis.net/wmts/1.0" '
        'xmlns:ows="http://www.opengis.net/ows/1.1" '
        'xmlns:xlink="http://www.w3.org/1999/xlink" version="1.0.0">',
        "<ows:ServiceIdentification>",
        f"<ows:Title>attnserve job {escape(job_id)}</ows:Title>",
        "<ows:ServiceType>OGC WMTS</ows:ServiceType>",
        "<ows:ServiceTypeVersion>1.0.0</ows:ServiceTypeVersion>",
        "</ows:ServiceIdentification>",
        "<Contents>",
    ]
    for tl in layers:
        url = f"{base_url}/jobs/{job_id}/tiles/{tl.name}/{{TileMatrix}}/{{TileCol}}/{{TileRow}}.png"
        parts += [
            "<Layer>",
            f"<ows:Title>{escape(tl.title)}</ows:Title>",
            f"<ows:Identifier>{escape(tl.name)}</ows:Identifier>",
            '<ows:WGS84BoundingBox crs="urn:ogc:def:crs:OGC:2:84">',
            f"<ows:LowerCorner>{west!r} {south!r}</ows:LowerCorner>",
            f"<ows:UpperCorner>{east!r} {north!r}</ows:UpperCorner>",
            "</ows:WGS84BoundingBox>",
            '<Style isDefault="true"><ows:Identifier>default</ows:Identifier></Style>',
            "<Format>image/png</Format>",
            "<TileMatrixSetLink><TileMatrixSet>WebMercatorQuad</TileMatrixSet></TileMatrixSetLink>",
            f'<ResourceURL format="image/png" resourceType="tile" template={quoteattr(url)}/>',
            "</Layer>",
        ]
    parts += [
        "<TileMatrixSet>",
        "<ows:Identifier>WebMercatorQuad</ows:Identifier>",
        "<ows:SupportedCRS>urn:ogc:def:crs:EPSG::3857</ows:SupportedCRS>",
        "<WellKnownScaleSet>urn:ogc:def:wkss:OGC:1.0:GoogleMapsCompatible</WellKnownScaleSet>",
    ]
    for matrix in web_mercator_matrices(maxzoom):
        x0, y0 = matrix.pointOfOrigin
        parts += [
            "<TileMatrix>",
            f"<ows:Identifier>{escape(str(matrix.id))}</ows:Identifier>",
            f"<ScaleDenominator>{matrix.scaleDenominator!r}</ScaleDenominator>",
            f"<TopLeftCorner>{x0!r} {y0!r}</TopLeftCorner>",
            f"<TileWidth>{TILE_SIZE}</TileWidth><TileHeight>{TILE_SIZE}</TileHeight>",
            f"<MatrixWidth>{matrix.matrixWidth}</MatrixWidth>",
            f"<MatrixHeight>{matrix.matrixHeight}</MatrixHeight>",
            "</TileMatrix>",
        ]
    parts += ["</TileMatrixSet>", "</Contents>", "</Capabilities>"]
    return "\n".join(parts)
