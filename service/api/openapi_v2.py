"""OpenAPI schemas and examples of the Open Inference Protocol (``/v2``) routes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from service.protocol.oip import DATATYPES, EXTENSIONS, HEADER_LENGTH, PLATFORM

# A shipped model, so that the examples name something a fresh server serves.
EXAMPLE_MODEL = "footprints"
EXAMPLE_VERSION = "2.2.0"
EXAMPLE_REF = f"{EXAMPLE_MODEL}:{EXAMPLE_VERSION}"


class TensorMetadata(BaseModel):
    """A tensor's name, datatype and shape (-1 for a dynamic dimension)."""

    name: str
    datatype: str = Field(examples=["FP32"])
    shape: list[int] = Field(examples=[[-1, 3, -1, -1]])


class ServerMetadata(BaseModel):
    """``GET /v2``."""

    name: str = Field(examples=["attnserve"])
    version: str
    extensions: list[str] = Field(examples=[EXTENSIONS])


class ModelMetadata(BaseModel):
    """``GET /v2/models/{name}``."""

    name: str = Field(examples=[EXAMPLE_MODEL])
    versions: list[str] = Field(examples=[[EXAMPLE_VERSION]])
    platform: str = Field(examples=[PLATFORM])
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class OutputTensor(BaseModel):
    """One output: ``data`` in JSON, or ``parameters.binary_data_size`` bytes after the header."""

    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    """``POST /v2/models/{name}/infer`` in JSON mode."""

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[OutputTensor]


def error_example(status: int, code: str, message: str) -> dict[str, Any]:
    """An OpenAPI response entry with an error body in the protocol's shape."""
    return {
        "description": message,
        "content": {
            "application/json": {
                "example": {"error": message, "code": code, "status": status},
            }
        },
    }


NOT_FOUND = error_example(404, "not_found", "no model named 'roads'; served: crops, footprints")
NOT_READY = error_example(503, "not_ready", "model repository is loading")
INFER_ERRORS: dict[int | str, dict[str, Any]] = {
    404: NOT_FOUND,
    413: error_example(413, "payload_too_large", "JSON tensor data over 16 MB; use binary data"),
    415: error_example(
        415, "unsupported_media_type", "Content-Encoding br is not accepted; use gzip or deflate"
    ),
    422: error_example(
        422,
        "invalid_input",
        "input 'image': shape [1, 3, 100, 100] does not fit [-1, 3, -1, -1] with height "
        "and width multiples of 16",
    ),
    503: error_example(503, "overloaded", f"model {EXAMPLE_REF} queue is full"),
    504: error_example(504, "deadline_exceeded", f"model {EXAMPLE_REF} did not answer in time"),
}


def _parameters(name: str, kind: str) -> dict[str, Any]:
    """Schema of a tensor's or request's ``parameters`` object with one known field."""
    return {"type": "object", "properties": {name: {"type": kind}}}


INFER_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": _parameters("binary_data_output", "boolean"),
        "inputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name", "shape", "datatype"],
                "properties": {
                    "name": {"type": "string"},
                    "shape": {"type": "array", "items": {"type": "integer"}},
                    "datatype": {"type": "string", "enum": list(DATATYPES)},
                    "parameters": _parameters("binary_data_size", "integer"),
                    "data": {"type": "array", "items": {}},
                },
            },
        },
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "parameters": _parameters("binary_data", "boolean"),
                },
            },
        },
    },
}
INFER_EXAMPLE: dict[str, Any] = {
    "inputs": [
        {"name": "series", "shape": [1, 2, 10], "datatype": "FP32", "data": [500.0] * 20},
        {"name": "days", "shape": [1, 2], "datatype": "FP32", "data": [90.0, 120.0]},
        {"name": "valid", "shape": [1, 2], "datatype": "BOOL", "data": [True, True]},
    ]
}

INFER_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": INFER_REQUEST_SCHEMA, "example": INFER_EXAMPLE},
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "description": (
                    f"binary tensor data extension: the JSON request (its length in the "
                    f"{HEADER_LENGTH} header), then each input with "
                    "parameters.binary_data_size, raw little-endian, row-major, in input order"
                ),
            },
        },
    }
}
INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": (
            f"JSON outputs; with binary outputs the body is application/octet-stream: the "
            f"JSON header ({HEADER_LENGTH} bytes), then each binary output"
        ),
        "content": {"application/octet-stream": {"schema": {"type": "string"}}},
    },
    **INFER_ERRORS,
}
