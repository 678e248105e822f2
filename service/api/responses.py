"""Response classes: fast JSON (numpy-aware) and GeoTIFF downloads."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from service.errors import InvalidInput

GEOTIFF = "image/tiff; application=geotiff"


class JSONBody(Response):
    """JSON encoded with orjson; numpy arrays serialised natively, NaN as null."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        """Encode ``content``."""
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)


def result_json(content: Any, status_code: int = 200) -> JSONBody:
    """A result answer: never cached by intermediaries."""
    return JSONBody(content, status_code=status_code, headers={"Cache-Control": "no-store"})


def geotiff_response(data: bytes, filename: str) -> Response:
    """A GeoTIFF download."""
    return Response(
        data,
        media_type=GEOTIFF,
        headers={
            "Content-Disposition": f'attachment; filename="{filename}"',
            "Cache-Control": "no-store",
        },
    )


def wants_geotiff(format_: str | None, accept: str | None) -> bool:
    """True when ``format=geotiff`` or the Accept header asks for a TIFF first."""
    if format_ is not None:
        fmt = format_.lower()
        if fmt in ("geotiff", "tiff", "tif"):
            return True
        if fmt == "json":
            return False
        raise InvalidInput(f"format must be json or geotiff, not {format_!r}")
    if accept:
        first = accept.split(",")[0].strip().lower()
        return first.startswith("image/tiff")
    return False
