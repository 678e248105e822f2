"""The Open Inference Protocol's error shape, ``{"error": "<message>"}``.

KServe clients read ``error`` as a string (tritonclient formats it into its
exception message), so the object ``{"error": {...}}`` the rest of the server
answers would break them. The server's ``code`` and ``status`` stay beside the
message, so nothing is lost.
"""

from __future__ import annotations

from typing import Any

import orjson

from service.protocol.oip import PREFIX


def is_protocol_path(path: str) -> bool:
    """Whether a request path is under the protocol's ``/v2`` prefix."""
    return path == PREFIX or path.startswith(PREFIX + "/")


def protocol_error(body: bytes, status: int) -> bytes:
    """A JSON error body of the server, rewritten to the protocol's shape.

    A body already in that shape is returned as is; one that is not JSON (or
    carries no error) becomes a bare ``{"error": "error"}`` with ``status``.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = None
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, str):
        return body
    out: dict[str, Any]
    if isinstance(error, dict):
        out = {
            "error": str(error.get("message", "error")),
            "code": error.get("code", "error"),
            "status": error.get("status", status),
        }
        if error.get("detail"):
            out["detail"] = error["detail"]
    else:
        out = {"error": "error", "code": "error", "status": status}
    return orjson.dumps(out)
