"""Open Inference Protocol datatypes, model metadata and inference responses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from service.errors import InvalidInput
from service.runtime.manifest import Manifest

PREFIX = "/v2"
HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data"]
PLATFORM = "onnxruntime_onnx"

# Protocol datatype <-> numpy dtype (BYTES and BF16 are not used by any model here).
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(bool),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
_BY_DTYPE = {dt: name for name, dt in DATATYPES.items()}
# Every output kind a manifest may declare holds probabilities or weights.
OUTPUT_DATATYPE = "FP32"


def dims(shape: list[int | str]) -> list[int]:
    """A manifest shape in protocol form: -1 for each symbolic dimension."""
    return [d if isinstance(d, int) else -1 for d in shape]


def datatype(dtype: str | np.dtype[Any]) -> str:
    """The protocol datatype of a numpy dtype (``float32`` -> ``FP32``).

    Raises:
        ValueError: a dtype the protocol has no name for.
    """
    name = _BY_DTYPE.get(np.dtype(dtype))
    if name is None:
        raise ValueError(f"no protocol datatype for {dtype}")
    return name


def model_metadata(manifest: Manifest, versions: list[str]) -> dict[str, Any]:
    """A model's protocol metadata: its graph inputs and every output, attention included."""
    return {
        "name": manifest.name,
        "versions": versions,
        "platform": PLATFORM,
        "inputs": [
            {"name": t.name, "datatype": datatype(t.dtype), "shape": dims(t.shape)}
            for t in manifest.tensors
        ],
        "outputs": [
            {"name": o.name, "datatype": OUTPUT_DATATYPE, "shape": dims(o.shape)}
            for o in manifest.outputs
        ],
    }


@dataclass(frozen=True)
class RequestedOutput:
    """An output the client asked for, and whether it wants it as binary data."""

    name: str
    binary: bool


def requested_outputs(manifest: Manifest, header: dict[str, Any]) -> list[RequestedOutput]:
    """The outputs to return, in order; all of the model's when none are named.

    Raises:
        InvalidInput: ``outputs`` is not a list, or names an output the model lacks.
    """
    params = header.get("parameters") or {}
    default_binary = bool(isinstance(params, dict) and params.get("binary_data_output", False))
    known = [o.name for o in manifest.outputs]
    asked = header.get("outputs")
    if asked is None:
        return [RequestedOutput(n, default_binary) for n in known]
    if not isinstance(asked, list):
        raise InvalidInput("outputs must be a list of {name, parameters}")
    wanted = []
    for item in asked:
        if not isinstance(item, dict) or item.get("name") not in known:
            got = item.get("name") if isinstance(item, dict) else item
            raise InvalidInput(
                f"output {got!r} is not an output of model {manifest.name}; "
                f"it has {', '.join(known)}"
            )
        p = item.get("parameters") or {}
        binary = p.get("binary_data", default_binary) if isinstance(p, dict) else default_binary
        wanted.append(RequestedOutput(item["name"], bool(binary)))
    return wanted


@dataclass(frozen=True)
class EncodedResponse:
    """An inference response on the wire: its body, media type and headers."""

    body: bytes
    media_type: str
    headers: dict[str, str] = field(default_factory=dict)


def encode_response(
    manifest: Manifest,
    request_id: Any,
    outputs: dict[str, np.ndarray],
    wanted: list[RequestedOutput],
) -> EncodedResponse:
    """The inference response: JSON, or a JSON header followed by the binary outputs.

    Binary outputs are raw little-endian, row-major, in the order of ``wanted``;
    the header's length then goes in ``Inference-Header-Content-Length``.
    """
    tensors: list[dict[str, Any]] = []
    payloads: list[bytes] = []
    for out in wanted:
        array = np.ascontiguousarray(outputs[out.name])
        tensor: dict[str, Any] = {
            "name": out.name,
            "datatype": datatype(array.dtype),
            "shape": list(array.shape),
        }
        if out.binary:
            raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            payloads.append(raw)
        else:
            tensor["data"] = array.ravel()
        tensors.append(tensor)
    body: dict[str, Any] = {"model_name": manifest.name, "model_version": manifest.version}
    if isinstance(request_id, str) and request_id:
        body["id"] = request_id
    body["outputs"] = tensors
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    headers = {"Cache-Control": "no-store"}
    if not payloads:
        return EncodedResponse(header, "application/json", headers)
    headers[HEADER_LENGTH] = str(len(header))
    return EncodedResponse(b"".join([header, *payloads]), "application/octet-stream", headers)
