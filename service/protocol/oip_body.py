"""Open Inference Protocol request bodies: Content-Encoding, JSON header and binary data."""

from __future__ import annotations

import zlib
from typing import Any

import orjson

from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from service.protocol.oip import HEADER_LENGTH
from service.runtime.manifest import Manifest

ENCODINGS = ("gzip", "deflate")


def _encoding(encoding: str | None) -> str:
    return (encoding or "identity").strip().lower()


def is_compressed(encoding: str | None) -> bool:
    """Whether a ``Content-Encoding`` value asks for inflating the body."""
    return _encoding(encoding) != "identity"


def decompress(body: bytes, encoding: str | None, limit: int, partial: bool = False) -> bytes:
    """A body as sent, inflated per its ``Content-Encoding`` to at most ``limit`` bytes.

    Args:
        body: the bytes as received.
        encoding: the ``Content-Encoding`` header (None: identity).
        limit: most bytes the inflated body may hold.
        partial: return the first ``limit`` bytes instead of refusing a longer body.

    Raises:
        UnsupportedMediaType: an encoding other than identity, gzip or deflate.
        InvalidInput: bytes that are not valid data of that encoding.
        PayloadTooLarge: an inflated body over ``limit`` (unless ``partial``).
    """
    enc = _encoding(encoding)
    if enc == "identity":
        return body
    if enc not in ENCODINGS:
        raise UnsupportedMediaType(f"Content-Encoding {enc} is not accepted; use gzip or deflate")
    # wbits 16+MAX for gzip, MAX for zlib ("deflate" in HTTP means zlib); capped so a
    # small compressed body cannot expand past the upload limit.
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if enc == "gzip" else zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise InvalidInput(f"the body is not valid {enc} data") from None
    if partial:
        return out[:limit]
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"decompressed body is over the {limit / 2**20:g} MB limit")
    return out


def split_header(
    body: bytes, header_length: str | None, json_limit: int
) -> tuple[dict[str, Any], bytes]:
    """The JSON inference request and the binary tensor data after it.

    Args:
        body: the inflated body.
        header_length: the ``Inference-Header-Content-Length`` header (None: all JSON).
        json_limit: most bytes the JSON part may hold.

    Raises:
        InvalidInput: a header length that does not fit the body, or JSON that is
            not an object.
        PayloadTooLarge: a JSON part over ``json_limit``.
    """
    if header_length is None:
        size = len(body)
    else:
        try:
            size = int(header_length)
        except ValueError:
            raise InvalidInput(f"{HEADER_LENGTH} must be an integer") from None
        if not 0 < size <= len(body):
            raise InvalidInput(f"{HEADER_LENGTH} {size} does not fit a {len(body)}-byte body")
    if size > json_limit:
        raise PayloadTooLarge(
            f"JSON request over {json_limit / 2**20:g} MB; send tensors as binary data"
        )
    try:
        header = orjson.loads(body[:size])
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the inference request is not valid JSON: {exc.msg}") from None
    if not isinstance(header, dict):
        raise InvalidInput("the inference request must be a JSON object")
    return header, body[size:]


def peek_header(
    raw: bytes, encoding: str | None, header_length: str, json_limit: int
) -> dict[str, Any] | None:
    """The JSON header of a compressed binary request, inflating only that much.

    A small compressed body may declare a huge tensor: its declared shapes can
    be refused before the tensors are inflated. None where the header cannot be
    read this way; the full decode then names the problem.
    """
    try:
        size = min(int(header_length), json_limit)
    except ValueError:
        return None
    if size <= 0:
        return None
    try:
        head = decompress(raw, encoding, size, partial=True)
    except InvalidInput:
        return None
    try:
        header = orjson.loads(head)
    except orjson.JSONDecodeError:
        return None
    return header if isinstance(header, dict) else None


def declared_shapes(manifest: Manifest, header: dict[str, Any]) -> list[list[int]]:
    """Every valid shape the request declares for the model's first input."""
    first = manifest.tensors[0].name
    items = header.get("inputs")
    shapes = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or item.get("name") != first:
            continue
        shape = item.get("shape")
        if isinstance(shape, list) and all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
        ):
            shapes.append(shape)
    return shapes
