"""The protocol's error shape, from the server's own error bodies."""

from __future__ import annotations

import orjson

from service.protocol.oip_errors import is_protocol_path, protocol_error


def test_server_errors_become_a_string_with_code_and_status() -> None:
    body = orjson.dumps(
        {
            "error": {
                "code": "invalid_input",
                "status": 422,
                "message": "input 'image': datatype FP64 given, model takes FP32",
                "detail": {"got": "FP64"},
            }
        }
    )
    assert orjson.loads(protocol_error(body, 422)) == {
        "error": "input 'image': datatype FP64 given, model takes FP32",
        "code": "invalid_input",
        "status": 422,
        "detail": {"got": "FP64"},
    }


def test_an_empty_detail_is_left_out_and_missing_fields_defaulted() -> None:
    body = orjson.dumps({"error": {"message": "no model named 'roads'", "detail": {}}})
    assert orjson.loads(protocol_error(body, 404)) == {
        "error": "no model named 'roads'",
        "code": "error",
        "status": 404,
    }


def test_a_body_in_the_protocol_shape_is_kept() -> None:
    body = b'{"error":"model repository is loading","code":"not_ready","status":503}'
    assert protocol_error(body, 503) is body


def test_bodies_without_an_error_get_a_bare_one() -> None:
    for body in (b"not json", b'{"detail": "Not Found"}', b"[1]"):
        assert orjson.loads(protocol_error(body, 404)) == {
            "error": "error",
            "code": "error",
            "status": 404,
        }


def test_only_paths_under_v2_are_the_protocol_s() -> None:
    assert is_protocol_path("/v2")
    assert is_protocol_path("/v2/models/footprints/infer")
    assert not is_protocol_path("/v2x")
    assert not is_protocol_path("/predict")
