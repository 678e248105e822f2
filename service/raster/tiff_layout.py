"""TIFF structure of a Cloud-Optimized GeoTIFF: IFDs first, then tile data, as GDAL lays it out.

A COG as GDAL's COG driver writes it (and as rio-cogeo validates it): the
header, GDAL's "ghost" structural metadata, every IFD (full resolution first,
then each overview) with their arrays, then the tiles of the smallest overview
first and the full-resolution tiles last, each tile in row-major order with its
byte count before it and its last 4 bytes repeated after it. This module
reads the tags of a small TIFF (to reuse what GDAL wrote for a georeference)
and writes the header and IFDs of such a file; the tiles are the caller's.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

# GDAL's structural metadata, byte for byte as its COG driver writes it: readers
# may trust the block leader and trailer and the row-major order it announces.
GHOST = (
    "LAYOUT=IFDS_BEFORE_DATA\n"
    "BLOCK_ORDER=ROW_MAJOR\n"
    "BLOCK_LEADER=SIZE_AS_UINT4\n"
    "BLOCK_TRAILER=LAST_4_BYTES_REPEATED\n"
    "KNOWN_INCOMPATIBLE_EDITION=NO\n "
)
GHOST_BYTES = f"GDAL_STRUCTURAL_METADATA_SIZE={len(GHOST):06d} bytes\n{GHOST}".encode()

# Tag numbers this module sets itself.
NEW_SUBFILE_TYPE, IMAGE_WIDTH, IMAGE_LENGTH, TILE_OFFSETS, TILE_BYTE_COUNTS = (
    254,
    256,
    257,
    324,
    325,
)
SHORT, LONG, LONG8 = 3, 4, 16
TYPE_SIZES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 16: 8}
# Below this many bytes a classic TIFF is written; BigTIFF above (offsets of 32 bits).
CLASSIC_LIMIT = 2**32 - 2**20


@dataclass(frozen=True)
class Tag:
    """One IFD entry: its number, TIFF type, value count and raw little-endian value bytes."""

    tag: int
    type: int
    count: int
    value: bytes

    @classmethod
    def of(cls, tag: int, type_: int, values: list[int]) -> Tag:
        """An integer tag (SHORT, LONG or LONG8) from its values."""
        code = {SHORT: "H", LONG: "I", LONG8: "Q"}[type_]
        return cls(tag, type_, len(values), struct.pack(f"<{len(values)}{code}", *values))


def read_tags(path: Path) -> list[Tag]:
    """The first IFD's tags of a small little-endian classic TIFF (as GDAL writes by default)."""
    data = path.read_bytes()
    if data[:4] != b"II*\x00":
        raise ValueError(f"{path.name} is not a little-endian classic TIFF")
    (ifd,) = struct.unpack_from("<I", data, 4)
    (entries,) = struct.unpack_from("<H", data, ifd)
    tags = []
    for i in range(entries):
        tag, type_, count, inline = struct.unpack_from("<HHI4s", data, ifd + 2 + 12 * i)
        size = TYPE_SIZES[type_] * count
        if size <= 4:
            value = inline[:size]
        else:
            (offset,) = struct.unpack("<I", inline)
            value = data[offset : offset + size]
        tags.append(Tag(tag, type_, count, value))
    return tags


@dataclass
class Level:
    """One image of the file (full resolution or an overview) and where its tiles go.

    ``tags`` are every tag but the tile offsets and byte counts; ``sizes`` the
    byte count of each tile in row-major order (0: a tile left out, read as
    nodata); ``offsets`` where each tile's data starts within the level's own
    data, leader included (a left-out tile's is ignored).
    """

    tags: list[Tag]
    sizes: list[int]
    offsets: list[int]
    data_bytes: int


def _ifd_bytes(tags: int, values: list[bytes], big: bool) -> int:
    head = 8 + 20 * tags + 8 if big else 2 + 12 * tags + 4
    inline = 8 if big else 4
    return head + sum(len(v) + len(v) % 2 for v in values if len(v) > inline)


def _level_tags(level: Level, data_at: int, big: bool) -> list[Tag]:
    offsets = [data_at + o + 4 if s else 0 for o, s in zip(level.offsets, level.sizes, strict=True)]
    wide = LONG8 if big else LONG
    return sorted(
        [
            *level.tags,
            Tag.of(TILE_OFFSETS, wide, offsets),
            Tag.of(TILE_BYTE_COUNTS, wide, level.sizes),
        ],
        key=lambda t: t.tag,
    )


def header(levels: list[Level]) -> tuple[bytes, list[int]]:
    """The file's bytes before the first tile, and where each level's data starts.

    Levels come full resolution first; their data is laid out smallest overview
    first, full resolution last. BigTIFF when the file would pass 4 GB.
    """
    total = sum(level.data_bytes for level in levels)
    big = total + 2**20 > CLASSIC_LIMIT
    start = (16 if big else 8) + len(GHOST_BYTES)
    start += start % 2
    # The arrays' sizes do not depend on the offsets in them: lay out, then fill.
    sizes = []
    for level in levels:
        tags = _level_tags(level, 0, big)
        sizes.append(_ifd_bytes(len(tags), [t.value for t in tags], big))
    data_at = [0] * len(levels)
    at = start + sum(sizes)
    for i in reversed(range(len(levels))):
        data_at[i] = at
        at += levels[i].data_bytes
    out = bytearray()
    if big:
        out += struct.pack("<2sHHHQ", b"II", 43, 8, 0, start)
    else:
        out += struct.pack("<2sHI", b"II", 42, start)
    out += GHOST_BYTES
    out += b"\x00" * (start - len(out))
    for i, level in enumerate(levels):
        ifd_at = len(out)
        following = ifd_at + sizes[i] if i + 1 < len(levels) else 0
        out += _ifd(_level_tags(level, data_at[i], big), ifd_at, following, big)
        if len(out) != ifd_at + sizes[i]:
            raise AssertionError("IFD size miscounted")
    return bytes(out), data_at


def _ifd(tags: list[Tag], at: int, following: int, big: bool) -> bytes:
    inline = 8 if big else 4
    entry, count_fmt, offset_fmt = ("<HHQ", "<Q", "<Q") if big else ("<HHI", "<H", "<I")
    head = bytearray(struct.pack(count_fmt, len(tags)))
    extra = bytearray()
    values_at = at + (8 + 20 * len(tags) + 8 if big else 2 + 12 * len(tags) + 4)
    for tag in tags:
        head += struct.pack(entry, tag.tag, tag.type, tag.count)
        if len(tag.value) <= inline:
            head += tag.value.ljust(inline, b"\x00")
        else:
            head += struct.pack(offset_fmt, values_at + len(extra))
            extra += tag.value + b"\x00" * (len(tag.value) % 2)
    head += struct.pack(offset_fmt, following)
    return bytes(head + extra)
