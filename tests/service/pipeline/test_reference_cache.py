"""The shared cache of a reference's chunks, over a real HTTP server."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from service.pipeline.reference_cache import CHUNK, CachedSource
from service.pipeline.references import References
from tests.helpers.ranged_http import RangedServer, ranged_server


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RangedServer, bytes]]:
    """A 3.3 MB file of random bytes on an HTTP server that honours Range."""
    root = tmp_path_factory.mktemp("cache")
    data = np.random.default_rng(0).bytes(13 * CHUNK + 123)
    (root / "blob.bin").write_bytes(data)
    with ranged_server(root) as server:
        yield server, data


def test_any_range_reads_as_the_file(served: tuple[RangedServer, bytes]) -> None:
    server, data = served
    cached = CachedSource(References([server.url], 10, 2**40).source(f"{server.url}blob.bin"))
    rng = np.random.default_rng(1)
    for _ in range(200):
        start = int(rng.integers(0, len(data)))
        length = int(rng.integers(1, 3 * CHUNK))
        got, size = cached.get(start, length)
        assert size == len(data)
        assert got == data[start : start + length]
    # Every chunk fetched once at most, however often it was read.
    assert cached.read_bytes <= len(data)


def test_least_recent_chunks_make_room(served: tuple[RangedServer, bytes]) -> None:
    server, data = served
    source = References([server.url], 10, 2**40).source(f"{server.url}blob.bin")
    cached = CachedSource(source, max_bytes=2 * CHUNK)
    for _ in range(2):
        for i in range(13):
            assert cached.get(i * CHUNK, 10)[0] == data[i * CHUNK : i * CHUNK + 10]
    assert cached.read_bytes == 2 * 13 * CHUNK  # a pass over 13 chunks through 2: no hits
    sent = source.read_bytes
    assert cached.get(12 * CHUNK, 10)[0] == data[12 * CHUNK : 12 * CHUNK + 10]
    assert source.read_bytes == sent  # the most recent chunk is still there
