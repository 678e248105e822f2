"""The pack: a job's arrays as ``.npy`` images one after another in one file."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np

PACK = "arrays.npk"
ALIGN = 64
# Data goes to disk in slices of this size: once the page cache holds a few GB
# of written files, one write() of 128 KiB or more into a new file cost ten
# times the kernel time of the same bytes in 64 KiB writes on the ext4 volumes
# measured.
WRITE_CHUNK = 64 * 1024


def write_pack(f: BinaryIO, arrays: dict[str, np.ndarray]) -> dict[str, int]:
    """Write arrays one after another as ``.npy`` images at 64-byte boundaries; their offsets."""
    offsets: dict[str, int] = {}
    at = 0
    for name, array in arrays.items():
        pad = -at % ALIGN
        if pad:
            at += f.write(b"\0" * pad)
        offsets[name] = at
        if array.dtype.hasobject:
            raise ValueError(f"array {name!r} holds Python objects and cannot be stored")
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        header = np.lib.format.header_data_from_array_1_0(array)
        np.lib.format.write_array_header_1_0(f, header)
        write_chunked(f, array.reshape(-1).view(np.uint8))
        at = f.tell()
    return offsets


def write_chunked(f: BinaryIO, data: bytes | np.ndarray) -> None:
    """Write ``data`` to ``f`` in slices of ``WRITE_CHUNK`` bytes."""
    view = memoryview(data if isinstance(data, bytes) else data.data).cast("B")
    for start in range(0, len(view), WRITE_CHUNK):
        f.write(view[start : start + WRITE_CHUNK])


def read_packed(path: Path, offset: int) -> np.ndarray:
    """The array whose ``.npy`` image starts at ``offset`` in a pack, memory-mapped read-only."""
    with open(path, "rb") as f:
        f.seek(offset)
        version = np.lib.format.read_magic(f)
        if version != (1, 0):
            raise ValueError(f"unexpected .npy version {version} in {path.name}")
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        data_at = f.tell()
    count = int(np.prod(shape))
    if count == 0:
        empty = np.empty(shape, dtype=dtype)
        empty.flags.writeable = False
        return empty
    flat = np.memmap(path, dtype=dtype, mode="r", offset=data_at, shape=(count,))
    # A plain view (np.memmap.reshape mishandles 0-d); it keeps the mapping alive.
    return flat.view(np.ndarray).reshape(shape, order="F" if fortran else "C")
