"""Requests by reference: ``href`` URLs, or a STAC Item or ItemCollection, to the files to read.

A STAC Item's bands are chosen by the ``assets`` field (``visual``, or
``red,green,blue``: one file per band, stacked in that order), or else matched
to the model's band names through the assets' ``eo:bands`` / ``bands``. An
ItemCollection is a time series: one input per item, dated by its ``datetime``.
"""

from __future__ import annotations

import dataclasses
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

import orjson

from service.errors import InvalidInput
from service.pipeline.references import References, read_all

if TYPE_CHECKING:
    from service.pipeline.intake import UploadOptions

# A STAC document fetched by URL is JSON: this is plenty.
MAX_STAC_BYTES = 4 * 2**20
MAX_REFERENCES = 400
JSON_FIELDS = frozenset(
    {"model", "href", "stac", "assets", "dates", "format", "async"}
    | {"tile_size", "overlap", "uint8", "compress", "min_confidence", "chip_stride"}
)


@dataclass(frozen=True)
class ReferenceQuery:
    """What a request names to read: ``hrefs`` (one per date), or a STAC document.

    Attributes:
        hrefs: URLs of GeoTIFFs, one per date for temporal models.
        stac: a STAC Item or ItemCollection, as its URL or inline.
        assets: the asset keys to use (None: matched by band names).
    """

    hrefs: list[str]
    stac: str | dict[str, Any] | None = None
    assets: list[str] | None = None

    @classmethod
    def from_fields(cls, hrefs: list[str], fields: Mapping[str, str]) -> ReferenceQuery | None:
        """The references of a form (``href`` parts, ``stac``, ``assets``); None if it has none."""
        stac: str | dict[str, Any] | None = fields.get("stac")
        if isinstance(stac, str) and stac.lstrip().startswith("{"):
            try:
                stac = orjson.loads(stac)
            except orjson.JSONDecodeError:
                raise InvalidInput("stac: not valid JSON") from None
        return cls._make(hrefs, stac, fields.get("assets"))

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> tuple[ReferenceQuery | None, dict[str, str]]:
        """The references of a JSON body, and its other fields as form fields would be."""
        hrefs = body.get("href", [])
        hrefs = [hrefs] if isinstance(hrefs, str) else hrefs
        if not isinstance(hrefs, list) or not all(isinstance(h, str) for h in hrefs):
            raise InvalidInput("href: a URL or a list of URLs")
        unknown = set(body) - JSON_FIELDS
        if unknown:
            raise InvalidInput(f"unknown fields: {', '.join(sorted(unknown))}")
        fields: dict[str, str] = {}
        for key, value in body.items():
            if key in ("href", "stac", "assets"):
                continue
            if isinstance(value, bool):
                fields[key] = "true" if value else "false"
            elif isinstance(value, list):
                fields[key] = orjson.dumps(value).decode()
            elif isinstance(value, str | int | float):
                fields[key] = str(value)
            else:
                raise InvalidInput(f"{key}: not a value a reference request takes")
        return cls._make(hrefs, body.get("stac"), body.get("assets")), fields

    @classmethod
    def _make(cls, hrefs: list[str], stac: Any, assets: Any) -> ReferenceQuery | None:
        if not hrefs and stac is None:
            return None
        if hrefs and stac is not None:
            raise InvalidInput("give either href or stac, not both")
        if len(hrefs) > MAX_REFERENCES:
            raise InvalidInput(f"href: at most {MAX_REFERENCES} references")
        if stac is not None and not isinstance(stac, str | dict):
            raise InvalidInput("stac: a URL of a STAC Item or ItemCollection, or one inline")
        if isinstance(assets, str):
            assets = [a.strip() for a in assets.split(",") if a.strip()]
        if assets is not None and (
            not isinstance(assets, list)
            or not assets
            or not all(isinstance(a, str) for a in assets)
        ):
            raise InvalidInput("assets: asset keys, comma-separated or a list")
        return cls(hrefs, stac, assets)

    def resolve(
        self, references: References, bands: list[str], options: UploadOptions
    ) -> tuple[list[list[str]], UploadOptions]:
        """The files to read, one list per input, and the options with the items' dates."""
        if self.stac is None:
            return [[h] for h in self.hrefs], options
        doc, base = self.stac, None
        if isinstance(doc, str):
            base = doc
            data = read_all(references.source(doc), MAX_STAC_BYTES)
            if data is None:
                raise InvalidInput(f"stac: the document is over {MAX_STAC_BYTES // 2**20} MiB")
            try:
                doc = orjson.loads(data)
            except orjson.JSONDecodeError:
                raise InvalidInput("stac: the document is not JSON") from None
        if not isinstance(doc, dict):
            raise InvalidInput("stac: expected a STAC Item or ItemCollection (a JSON object)")
        if doc.get("type") == "Feature":
            return [self._files(doc, base, bands)], options
        if doc.get("type") != "FeatureCollection" or not isinstance(doc.get("features"), list):
            raise InvalidInput("stac: expected a STAC Item (Feature) or ItemCollection")
        items = sorted(((_item_date(i), i) for i in doc["features"]), key=lambda d: d[0])
        if not items or len(items) > MAX_REFERENCES:
            raise InvalidInput(f"stac: an ItemCollection of 1 to {MAX_REFERENCES} items")
        inputs = [self._files(item, base, bands) for _, item in items]
        if options.dates is None:
            options = dataclasses.replace(options, dates=[d for d, _ in items])
        return inputs, options

    def _files(self, item: Any, base: str | None, bands: list[str]) -> list[str]:
        """An item's files for the model's ``bands``: one with all, or one per band."""
        assets = item.get("assets") if isinstance(item, dict) else None
        if not isinstance(assets, dict) or not assets:
            raise InvalidInput("stac: an item has no assets")
        wanted = [b.lower() for b in bands]
        keys = self.assets
        if keys is None:
            keys = _match(assets, wanted)
        missing = [k for k in keys if not isinstance(assets.get(k), dict)]
        if missing:
            raise InvalidInput(
                f"stac: no asset {', '.join(missing)}; the item has {', '.join(sorted(assets))}"
            )
        if len(keys) == 1:
            names = _band_names(assets[keys[0]])
            if names and names != wanted:
                raise InvalidInput(
                    f"stac: asset {keys[0]} holds bands {', '.join(names)}; the model takes "
                    f"{', '.join(bands)}"
                )
        return [_href(assets[k], base) for k in keys]


def _band_names(asset: dict[str, Any]) -> list[str]:
    """An asset's band names from ``bands`` (STAC 1.1) or ``eo:bands``, lower case."""
    names = []
    for band in asset.get("bands") or asset.get("eo:bands") or []:
        if not isinstance(band, dict):
            return []
        name = band.get("eo:common_name") or band.get("common_name") or band.get("name")
        names.append(str(name).lower())
    return names


def _match(assets: dict[str, Any], wanted: list[str]) -> list[str]:
    """Asset keys for the model's bands: one asset holding them all, or one per band."""
    for key, asset in assets.items():
        if isinstance(asset, dict) and _band_names(asset) == wanted:
            return [key]
    per_band = []
    for band in wanted:
        found = [
            k
            for k, a in assets.items()
            if isinstance(a, dict) and (k.lower() == band or _band_names(a) == [band])
        ]
        if not found:
            break
        per_band.append(found[0])
    else:
        return per_band
    if wanted == ["red", "green", "blue"] and "visual" in assets:
        return ["visual"]
    raise InvalidInput(
        f"stac: no asset or assets hold the model's bands {', '.join(wanted)}; name them with "
        "the assets field"
    )


def _href(asset: dict[str, Any], base: str | None) -> str:
    href = asset.get("href")
    if not isinstance(href, str) or not href:
        raise InvalidInput("stac: an asset has no href")
    if urlsplit(href).scheme:
        return href
    if base is None:
        raise InvalidInput("stac: an inline item's asset hrefs must be absolute URLs")
    parts = urlsplit(base)
    if parts.scheme == "s3":  # urljoin leaves schemes it does not know alone
        path = posixpath.normpath(posixpath.join(posixpath.dirname(parts.path), href))
        return f"s3://{parts.netloc}{path}"
    return urljoin(base, href)


def _item_date(item: Any) -> date:
    props = item.get("properties") if isinstance(item, dict) else None
    value = (props or {}).get("datetime") or (props or {}).get("start_datetime")
    if not isinstance(value, str):
        raise InvalidInput("stac: each item of an ItemCollection needs a datetime")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).date()
    except ValueError:
        raise InvalidInput(f"stac: datetime {value[:40]!r} is not an ISO date") from None
