"""Protocol datatypes, model metadata, requested outputs and response encoding."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from service.errors import InvalidInput
from service.protocol.oip import (
    HEADER_LENGTH,
    PLATFORM,
    RequestedOutput,
    datatype,
    dims,
    encode_response,
    model_metadata,
    requested_outputs,
)
from service.runtime.manifest import Manifest


def test_datatypes_follow_the_protocol_names() -> None:
    assert datatype("float32") == "FP32"
    assert datatype(np.dtype(bool)) == "BOOL"
    assert datatype(np.dtype(np.uint16)) == "UINT16"
    with pytest.raises(ValueError, match="complex64"):
        datatype(np.dtype(np.complex64))


def test_symbolic_dimensions_become_minus_one() -> None:
    assert dims(["batch", 3, "height", "width"]) == [-1, 3, -1, -1]


def test_model_metadata_lists_inputs_and_every_output(footprints: Manifest) -> None:
    meta = model_metadata(footprints, ["2.0.0"])
    assert meta["name"] == "footprints"
    assert meta["versions"] == ["2.0.0"]
    assert meta["platform"] == PLATFORM
    assert meta["inputs"] == [
        {"name": "image", "datatype": "FP32", "shape": [-1, 3, -1, -1]},
        {"name": "band_mean", "datatype": "FP32", "shape": [-1, 3]},
    ]
    names = [o["name"] for o in meta["outputs"]]
    assert names == [o.name for o in footprints.outputs]
    assert {"probability", "gate_1", "band_weights"} <= set(names)
    assert {o["datatype"] for o in meta["outputs"]} == {"FP32"}


def test_all_outputs_are_returned_when_none_are_named(crops: Manifest) -> None:
    assert requested_outputs(crops, {}) == [
        RequestedOutput("probabilities", False),
        RequestedOutput("attention", False),
    ]
    binary = requested_outputs(crops, {"parameters": {"binary_data_output": True}})
    assert all(out.binary for out in binary)


def test_named_outputs_keep_their_order_and_binary_flag(crops: Manifest) -> None:
    header = {
        "parameters": {"binary_data_output": True},
        "outputs": [
            {"name": "attention", "parameters": {"binary_data": False}},
            {"name": "probabilities"},
        ],
    }
    assert requested_outputs(crops, header) == [
        RequestedOutput("attention", False),
        RequestedOutput("probabilities", True),
    ]


def test_an_unknown_output_is_refused_with_the_model_outputs(crops: Manifest) -> None:
    with pytest.raises(InvalidInput, match="output 'gate_1' is not an output of model crops"):
        requested_outputs(crops, {"outputs": [{"name": "gate_1"}]})
    with pytest.raises(InvalidInput, match="must be a list"):
        requested_outputs(crops, {"outputs": "probabilities"})


def _outputs() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    return {
        "probabilities": rng.random((2, 6), dtype=np.float32),
        "attention": rng.random((2, 4, 5), dtype=np.float32),
    }


def test_json_response_round_trips(crops: Manifest) -> None:
    outputs = _outputs()
    wanted = [RequestedOutput("attention", False), RequestedOutput("probabilities", False)]
    encoded = encode_response(crops, "req-9", outputs, wanted)
    assert encoded.media_type == "application/json"
    assert HEADER_LENGTH not in encoded.headers
    body = orjson.loads(encoded.body)
    assert (body["model_name"], body["model_version"], body["id"]) == ("crops", "1.0.0", "req-9")
    assert [o["name"] for o in body["outputs"]] == ["attention", "probabilities"]
    for out in body["outputs"]:
        array = outputs[out["name"]]
        assert out["datatype"] == "FP32"
        assert out["shape"] == list(array.shape)
        np.testing.assert_array_equal(np.array(out["data"], np.float32), array.ravel())


def test_binary_response_round_trips(crops: Manifest) -> None:
    outputs = _outputs()
    wanted = [RequestedOutput("probabilities", True), RequestedOutput("attention", True)]
    encoded = encode_response(crops, None, outputs, wanted)
    assert encoded.media_type == "application/octet-stream"
    size = int(encoded.headers[HEADER_LENGTH])
    header = orjson.loads(encoded.body[:size])
    assert "id" not in header
    offset = size
    for out in header["outputs"]:
        n = out["parameters"]["binary_data_size"]
        got = np.frombuffer(encoded.body[offset : offset + n], "<f4").reshape(out["shape"])
        np.testing.assert_array_equal(got, outputs[out["name"]])
        offset += n
    assert offset == len(encoded.body)


def test_json_and_binary_outputs_mix(crops: Manifest) -> None:
    outputs = _outputs()
    wanted = [RequestedOutput("probabilities", False), RequestedOutput("attention", True)]
    encoded = encode_response(crops, "", outputs, wanted)
    size = int(encoded.headers[HEADER_LENGTH])
    header = orjson.loads(encoded.body[:size])
    assert "id" not in header  # an empty id is not echoed
    assert "data" in header["outputs"][0]
    assert header["outputs"][1]["parameters"]["binary_data_size"] == 2 * 4 * 5 * 4
    assert len(encoded.body) == size + 2 * 4 * 5 * 4
