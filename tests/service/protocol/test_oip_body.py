"""Request bodies: Content-Encoding with its limits, and the JSON header before binary data."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable

import orjson
import pytest

from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from service.protocol.oip_body import (
    declared_shapes,
    decompress,
    is_compressed,
    peek_header,
    split_header,
)
from service.runtime.manifest import Manifest
from tests.helpers.bodies import v2_gzip_zeros

MB = 2**20


def test_identity_is_passed_through() -> None:
    body = b'{"inputs": []}'
    assert decompress(body, None, 4) is body
    assert decompress(body, " Identity ", 4) is body
    assert not is_compressed(None)
    assert is_compressed("gzip")


@pytest.mark.parametrize(
    ("encoding", "pack"), [("gzip", gzip.compress), ("deflate", zlib.compress)]
)
def test_gzip_and_deflate_are_inflated(encoding: str, pack: Callable[[bytes], bytes]) -> None:
    raw = orjson.dumps({"inputs": [{"name": "x", "data": list(range(100))}]})
    assert decompress(pack(raw), encoding, MB) == raw


@pytest.mark.parametrize(
    ("encoding", "pack"), [("gzip", gzip.compress), ("deflate", zlib.compress)]
)
def test_a_decompression_bomb_is_refused_at_the_limit(
    encoding: str, pack: Callable[[bytes], bytes]
) -> None:
    bomb = pack(bytes(64 * MB))
    assert len(bomb) < MB // 4
    with pytest.raises(PayloadTooLarge, match="over the 1 MB limit"):
        decompress(bomb, encoding, MB)


def test_partial_inflates_only_the_start() -> None:
    body = gzip.compress(b"head" + bytes(8 * MB))
    assert decompress(body, "gzip", 4, partial=True) == b"head"


def test_unknown_encodings_and_broken_data_are_refused() -> None:
    with pytest.raises(UnsupportedMediaType, match="Content-Encoding br is not accepted"):
        decompress(b"x", "br", MB)
    with pytest.raises(InvalidInput, match="not valid gzip data"):
        decompress(b"not gzip at all", "gzip", MB)


def test_the_header_splits_from_binary_data() -> None:
    header = b'{"inputs": [{"name": "image"}]}'
    body = header + b"\x00\x01\x02"
    parsed, rest = split_header(body, str(len(header)), MB)
    assert parsed == {"inputs": [{"name": "image"}]}
    assert rest == b"\x00\x01\x02"
    whole, nothing = split_header(header, None, MB)
    assert whole == parsed
    assert nothing == b""


@pytest.mark.parametrize(
    ("body", "length", "message"),
    [
        (b"{}", "two", "must be an integer"),
        (b"{}", "99", "99 does not fit a 2-byte body"),
        (b"{}", "0", "0 does not fit"),
        (b"{not json", None, "not valid JSON"),
        (b"[1, 2]", None, "must be a JSON object"),
    ],
)
def test_bad_headers_are_invalid_input(body: bytes, length: str | None, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        split_header(body, length, MB)


def test_a_json_part_over_its_limit_is_too_large() -> None:
    body = orjson.dumps({"inputs": [], "pad": "x" * 2048})
    with pytest.raises(PayloadTooLarge, match="send tensors as binary data"):
        split_header(body, None, 1024)


def test_a_compressed_header_is_read_without_inflating_the_tensors(
    footprints: Manifest,
) -> None:
    # 192 MiB of zeros declared, a few hundred KiB sent: only the header is inflated.
    body, headers = v2_gzip_zeros("image", [1, 3, 4096, 4096])
    assert len(body) < 1024 * 1024
    length = headers["inference-header-content-length"]
    header = peek_header(body, "gzip", length, MB)
    assert header is not None
    assert declared_shapes(footprints, header) == [[1, 3, 4096, 4096]]


def test_an_unreadable_compressed_header_is_left_to_the_full_decode() -> None:
    body = gzip.compress(b'{"inputs": []}')
    assert peek_header(body, "gzip", "abc", MB) is None
    assert peek_header(body, "gzip", "0", MB) is None
    assert peek_header(b"garbage", "gzip", "10", MB) is None
    assert peek_header(gzip.compress(b"[1, 2, 3]"), "gzip", "9", MB) is None
    assert peek_header(gzip.compress(b"{bad"), "gzip", "4", MB) is None


def test_declared_shapes_are_those_of_the_first_input(footprints: Manifest) -> None:
    header = {
        "inputs": [
            {"name": "band_mean", "shape": [1, 3]},
            {"name": "image", "shape": [2, 3, 64, 64]},
            {"name": "image", "shape": [1, 3, -1, 64]},
            {"name": "image", "shape": [1, True, 64, 64]},
            "not a tensor",
        ]
    }
    assert declared_shapes(footprints, header) == [[2, 3, 64, 64]]
    assert declared_shapes(footprints, {"inputs": "x"}) == []
