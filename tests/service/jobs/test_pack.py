"""The pack format: ``.npy`` images one after another, each at a 64-byte boundary."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from service.jobs.pack import ALIGN, WRITE_CHUNK, read_packed, write_chunked, write_pack


def _pack(path: Path, arrays: dict[str, np.ndarray]) -> dict[str, int]:
    with open(path, "wb") as f:
        return write_pack(f, arrays)


def test_each_array_is_a_complete_npy_image_at_an_aligned_offset(tmp_path: Path) -> None:
    arrays = {
        "a": np.arange(7, dtype=np.int16),
        "b": np.linspace(0, 1, 33, dtype=np.float32).reshape(3, 11),
        "c": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    }
    path = tmp_path / "arrays.npk"
    offsets = _pack(path, arrays)
    assert list(offsets) == ["a", "b", "c"]
    assert all(at % ALIGN == 0 for at in offsets.values())
    raw = path.read_bytes()
    for name, at in offsets.items():
        # Any .npy reader can start at the offset.
        loaded = np.load(io.BytesIO(raw[at:]))
        np.testing.assert_array_equal(loaded, arrays[name])
        mapped = read_packed(path, at)
        np.testing.assert_array_equal(mapped, arrays[name])
        assert mapped.dtype == arrays[name].dtype
        assert not mapped.flags.writeable


def test_zero_dimensional_and_empty_arrays_round_trip(tmp_path: Path) -> None:
    arrays = {"scalar": np.array(3.5), "empty": np.zeros((0, 4), np.uint8)}
    path = tmp_path / "arrays.npk"
    offsets = _pack(path, arrays)
    assert read_packed(path, offsets["scalar"]).shape == ()
    assert float(read_packed(path, offsets["scalar"])) == 3.5
    empty = read_packed(path, offsets["empty"])
    assert empty.shape == (0, 4)
    assert not empty.flags.writeable


def test_object_arrays_are_refused() -> None:
    with pytest.raises(ValueError, match="Python objects"):
        write_pack(io.BytesIO(), {"o": np.array([object(), 1])})


def test_a_different_npy_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "arrays.npk"
    with open(path, "wb") as f:
        np.lib.format.write_array(f, np.zeros(3), version=(2, 0))
    with pytest.raises(ValueError, match="version"):
        read_packed(path, 0)


class _Recorder(io.BytesIO):
    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []

    def write(self, data: object) -> int:
        n = super().write(data)  # type: ignore[arg-type]
        self.sizes.append(n)
        return n


@pytest.mark.parametrize("data", [b"x" * (2 * WRITE_CHUNK + 5), np.ones(WRITE_CHUNK + 1, np.uint8)])
def test_data_goes_out_in_slices_of_at_most_one_chunk(data: bytes | np.ndarray) -> None:
    out = _Recorder()
    write_chunked(out, data)
    assert max(out.sizes) == WRITE_CHUNK
    assert out.getvalue() == bytes(data)
