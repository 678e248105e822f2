"""Request bodies for ``/predict`` (multipart and JSON) and ``/v2`` (binary tensors)."""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator, Sequence
from typing import Any

import httpx
import numpy as np

# A /v2 input: name, shape, datatype and its raw little-endian bytes.
Tensor = tuple[str, Sequence[int], str, bytes]


def upload(
    image: bytes | Sequence[bytes],
    model: str = "footprints",
    name: str = "scene.tif",
    **fields: str,
) -> dict[str, Any]:
    """``httpx`` arguments of a multipart ``/predict``: ``model``, ``fields``, ``image`` parts."""
    images = [image] if isinstance(image, bytes) else list(image)
    files = [("image", (name, data, "image/tiff")) for data in images]
    return {"data": {"model": model, **fields}, "files": files}


def multipart(
    image: bytes | Sequence[bytes], model: str = "footprints", **fields: str
) -> tuple[bytes, str]:
    """The same upload as one body and its content type, for clients that write raw HTTP."""
    request = httpx.Request("POST", "http://attnserve/predict", **upload(image, model, **fields))
    return request.read(), request.headers["content-type"]


def chunked_upload(model: str, size: int, boundary: str = "b") -> Iterator[bytes]:
    """A well-formed multipart upload of a ``size``-byte image, to stream without Content-Length."""
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="model"\r\n\r\n{model}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.tif"\r\n'
        "Content-Type: image/tiff\r\n\r\nII*\x00"
    ).encode()
    for _ in range(size // 2**16):
        yield b"\0" * 2**16
    yield f"\r\n--{boundary}--\r\n".encode()


def parcels(
    series: np.ndarray,
    valid: np.ndarray | None = None,
    model: str = "crops",
    **when: list[str] | list[float],
) -> dict[str, Any]:
    """A JSON ``/predict`` of parcels ``p0, p1, ...``: ``series (N, T, C)``, ``valid (N, T)``.

    ``when`` is ``dates=[...]`` (ISO dates) or ``days=[...]`` (day of year).
    """
    items: list[dict[str, Any]] = []
    for i, rows in enumerate(series):
        item: dict[str, Any] = {"id": f"p{i}", "series": np.asarray(rows).tolist()}
        if valid is not None:
            item["valid"] = np.asarray(valid[i]).tolist()
        items.append(item)
    return {"model": model, **when, "parcels": items}


def v2_header(*inputs: tuple[str, Sequence[int], str, int]) -> bytes:
    """The JSON head of a binary ``/v2`` infer request: name, shape, datatype, byte size."""
    return json.dumps(
        {
            "inputs": [
                {
                    "name": name,
                    "shape": list(shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": nbytes},
                }
                for name, shape, datatype, nbytes in inputs
            ]
        }
    ).encode()


def v2_headers(header: bytes, **extra: str) -> dict[str, str]:
    """The HTTP headers of a binary ``/v2`` request whose JSON head is ``header``."""
    return {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
        **extra,
    }


def v2_binary(*tensors: Tensor) -> tuple[bytes, dict[str, str]]:
    """A binary ``/v2`` infer request of ``tensors``: body and headers."""
    header = v2_header(*((n, s, d, len(raw)) for n, s, d, raw in tensors))
    return header + b"".join(t[3] for t in tensors), v2_headers(header)


def v2_gzip_zeros(
    name: str, shape: Sequence[int], itemsize: int = 4, level: int = 9
) -> tuple[bytes, dict[str, str]]:
    """A gzip binary ``/v2`` request of one FP32 input of zeros, never held inflated."""
    nbytes = int(np.prod(shape)) * itemsize
    header = v2_header((name, shape, "FP32", nbytes))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=level, mtime=0) as gz:
        gz.write(header)
        zeros = bytes(2**22)
        for _ in range(nbytes // len(zeros)):
            gz.write(zeros)
        gz.write(bytes(nbytes % len(zeros)))
    return out.getvalue(), v2_headers(header, **{"content-encoding": "gzip"})
