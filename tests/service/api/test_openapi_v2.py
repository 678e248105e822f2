"""The /v2 routes' OpenAPI document: schemas, and examples that name what ships."""

from __future__ import annotations

import re
from typing import Any

import pytest

from service.api.openapi_v2 import (
    EXAMPLE_MODEL,
    EXAMPLE_REF,
    EXAMPLE_VERSION,
    INFER_ERRORS,
    ModelMetadata,
)
from service.app import create_app
from service.config import SHIPPED_MODELS, Settings
from service.protocol.oip import DATATYPES, model_metadata
from service.runtime.manifest import Manifest


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    document: dict[str, Any] = create_app(Settings()).openapi()
    return document


def test_examples_name_a_shipped_model() -> None:
    assert (SHIPPED_MODELS / f"{EXAMPLE_MODEL}-{EXAMPLE_VERSION}.onnx").is_file()
    refs = []
    for entry in INFER_ERRORS.values():
        example = entry["content"]["application/json"]["example"]
        assert isinstance(example["error"], str)  # the protocol's shape
        refs += re.findall(r"[a-z][\w-]*:\d+\.\d+\.\d+", example["error"])
    assert EXAMPLE_REF in refs
    for ref in refs:
        name, version = ref.split(":")
        assert (SHIPPED_MODELS / f"{name}-{version}.onnx").is_file(), ref


def test_model_metadata_schema_fits_what_the_codec_writes(footprints: Manifest) -> None:
    manifest = footprints
    assert (manifest.name, manifest.version) == (EXAMPLE_MODEL, EXAMPLE_VERSION)
    meta = ModelMetadata.model_validate(model_metadata(manifest, [EXAMPLE_VERSION]))
    assert meta.name == EXAMPLE_MODEL
    assert [t.name for t in meta.inputs] == [t.name for t in manifest.tensors]


def test_latest_and_versioned_routes_are_both_documented(spec: dict[str, Any]) -> None:
    paths = spec["paths"]
    for tail, method in (("", "get"), ("/ready", "get"), ("/infer", "post")):
        latest = paths[f"/v2/models/{{name}}{tail}"][method]
        versioned = paths[f"/v2/models/{{name}}/versions/{{version}}{tail}"][method]
        where = {p["name"]: p["in"] for p in versioned["parameters"]}
        assert where == {"name": "path", "version": "path"}
        assert latest["operationId"] != versioned["operationId"]
        assert "404" in latest["responses"]
        assert "404" in versioned["responses"]
    infer = paths["/v2/models/{name}/infer"]["post"]
    body = infer["requestBody"]["content"]
    assert set(body) == {"application/json", "application/octet-stream"}
    datatypes = body["application/json"]["schema"]["properties"]["inputs"]["items"]
    assert datatypes["properties"]["datatype"]["enum"] == list(DATATYPES)
    assert "Inference-Header-Content-Length" in body["application/octet-stream"]["description"]
