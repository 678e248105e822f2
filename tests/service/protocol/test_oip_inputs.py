"""Input tensors from JSON and binary data, checked against the shipped models' manifests."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest

from service.errors import InvalidInput
from service.protocol.oip_body import split_header
from service.protocol.oip_inputs import decode_inputs
from service.runtime.manifest import Manifest
from tests.helpers.bodies import v2_binary


def _series(rows: int = 2, dates: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    valid = np.ones((rows, dates), dtype=bool)
    valid[0, 1] = False
    return {
        "series": rng.uniform(100, 4000, (rows, dates, 10)).astype(np.float32),
        "days": np.tile(np.arange(dates, dtype=np.float32) * 16 + 60, (rows, 1)),
        "valid": valid,
    }


def _json_tensor(name: str, array: np.ndarray, datatype: str) -> dict[str, Any]:
    return {
        "name": name,
        "shape": list(array.shape),
        "datatype": datatype,
        "data": array.ravel().tolist(),
    }


TYPES = {"series": "FP32", "days": "FP32", "valid": "BOOL"}


def test_json_tensors_round_trip(crops: Manifest) -> None:
    arrays = _series()
    inputs = [_json_tensor(n, a, TYPES[n]) for n, a in arrays.items()]
    header, binary = split_header(orjson.dumps({"inputs": inputs}), None, 2**20)
    feed = decode_inputs(crops, header["inputs"], binary)
    assert set(feed) == set(arrays)
    for name, array in arrays.items():
        assert feed[name].dtype == array.dtype
        np.testing.assert_array_equal(feed[name], array)


def test_binary_tensors_round_trip(crops: Manifest) -> None:
    arrays = _series()
    body, headers = v2_binary(
        *(
            (n, a.shape, TYPES[n], a.astype(a.dtype.newbyteorder("<")).tobytes())
            for n, a in arrays.items()
        )
    )
    header, binary = split_header(body, headers["inference-header-content-length"], 2**20)
    feed = decode_inputs(crops, header["inputs"], binary)
    for name, array in arrays.items():
        np.testing.assert_array_equal(feed[name], array)
        assert feed[name].dtype == array.dtype


def test_json_and_binary_inputs_mix(crops: Manifest) -> None:
    arrays = _series()
    raw = arrays["series"].tobytes()
    inputs = [
        {
            "name": "series",
            "shape": list(arrays["series"].shape),
            "datatype": "FP32",
            "parameters": {"binary_data_size": len(raw)},
        },
        _json_tensor("days", arrays["days"], "FP32"),
        _json_tensor("valid", arrays["valid"], "BOOL"),
    ]
    feed = decode_inputs(crops, inputs, raw)
    np.testing.assert_array_equal(feed["series"], arrays["series"])
    np.testing.assert_array_equal(feed["valid"], arrays["valid"])


def test_an_input_with_a_default_may_be_left_out(footprints: Manifest) -> None:
    image = np.zeros((1, 3, 32, 32), dtype=np.float32)
    feed = decode_inputs(footprints, [_json_tensor("image", image, "FP32")], b"")
    assert list(feed) == ["image"]  # band_mean is the caller's to fill
    mean = _json_tensor("band_mean", np.zeros((1, 3)), "FP32")
    assert _refused(footprints, [mean]) == "model footprints also needs input(s) image"


def _refused(manifest: Manifest, inputs: Any, binary: bytes = b"") -> str:
    with pytest.raises(InvalidInput) as info:
        decode_inputs(manifest, inputs, binary)
    return info.value.message


def test_bad_datatypes_and_shapes_are_refused_by_name(
    footprints: Manifest, crops: Manifest
) -> None:
    image = np.zeros((1, 3, 32, 32))
    wrong = _json_tensor("image", image, "FP64")
    assert "input 'image': datatype FP64 given, model takes FP32" in _refused(footprints, [wrong])
    odd = _json_tensor("image", np.zeros((1, 3, 30, 32)), "FP32")
    assert "input 'image'" in _refused(footprints, [odd])
    assert "height must be a multiple of 16" in _refused(footprints, [odd])
    flat = _json_tensor("image", np.zeros((3, 32, 32)), "FP32")
    assert "4 dimensions expected" in _refused(footprints, [flat])
    bands = _json_tensor("image", np.zeros((1, 4, 32, 32)), "FP32")
    assert "dimension 1 must be 3" in _refused(footprints, [bands])
    empty = _json_tensor("image", np.zeros((0, 3, 32, 32)), "FP32")
    assert "dimension 0 (batch) is empty" in _refused(footprints, [empty])
    arrays = _series()
    arrays["days"] = np.zeros((2, 4), dtype=np.float32)
    inputs = [_json_tensor(n, a, TYPES[n]) for n, a in arrays.items()]
    assert "input 'days'" in _refused(crops, inputs)
    assert "dates is 4 here but 3 in input 'series'" in _refused(crops, inputs)


def test_unknown_missing_and_repeated_inputs_are_refused(crops: Manifest) -> None:
    arrays = _series()
    series = _json_tensor("series", arrays["series"], "FP32")
    assert "also needs input(s) days, valid" in _refused(crops, [series])
    assert "input 'series' is given twice" in _refused(crops, [series, series])
    roads = {"name": "roads", "shape": [1], "datatype": "FP32", "data": [1.0]}
    message = _refused(crops, [roads])
    assert "input 'roads' is not an input of model crops; it takes series, days, valid" in message
    assert "give one tensor per model input" in _refused(crops, [])
    assert "each tensor needs a name" in _refused(crops, [{"shape": [1]}])
    bad_shape = {"name": "series", "shape": [1, -2, 10], "datatype": "FP32", "data": []}
    assert "shape must be a list of non-negative integers" in _refused(crops, [bad_shape])


def test_json_data_must_match_shape_and_datatype(footprints: Manifest, crops: Manifest) -> None:
    short = {"name": "image", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": [1.0]}
    assert "1 values given, the shape needs 768" in _refused(footprints, [short])
    arrays = _series()
    flags = _json_tensor("valid", arrays["valid"].astype(np.float32), "BOOL")
    inputs = [
        _json_tensor("series", arrays["series"], "FP32"),
        _json_tensor("days", arrays["days"], "FP32"),
        flags,
    ]
    assert "input 'valid': data values do not match datatype BOOL" in _refused(crops, inputs)
    words = {"name": "image", "shape": [1, 3, 16, 16], "datatype": "FP32", "data": "zeros"}
    assert "give data (a list) or binary_data_size" in _refused(footprints, [words])


def test_binary_sizes_must_fit_the_shape_and_the_body(footprints: Manifest) -> None:
    raw = np.zeros((1, 3, 16, 16), dtype=np.float32).tobytes()

    def tensor(size: int) -> dict[str, Any]:
        return {
            "name": "image",
            "shape": [1, 3, 16, 16],
            "datatype": "FP32",
            "parameters": {"binary_data_size": size},
        }

    assert "binary_data_size 3072 exceeds the body" in _refused(
        footprints, [tensor(3072)], raw[:-4]
    )
    message = _refused(footprints, [tensor(3068)], raw[:-4])
    assert "3068 bytes of binary data for shape [1, 3, 16, 16] of FP32, which needs 3072" in message
    assert "4 bytes of binary data belong to no input" in _refused(
        footprints, [tensor(3072)], raw + b"\x00" * 4
    )
