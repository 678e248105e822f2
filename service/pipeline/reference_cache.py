"""Recently read parts of a reference, shared by its readers.

A scene job opens its input more than once (the segmentation task reads tiles
and rows through two datasets, band means in a decimated pass), each pass
through its own file object. Without a shared cache each pass fetches the
same bytes again: 3.7 times a 2048 x 2048 scene's size in the live test.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.pipeline.references import RangeSource

CHUNK = 256 * 1024
MAX_CACHED = 64 * 2**20


class CachedSource:
    """A :class:`RangeSource` whose fetched bytes are kept in aligned chunks, least recent out.

    Args:
        source: where missing chunks are fetched from (runs of them in one GET).
        max_bytes: most bytes kept.
    """

    def __init__(self, source: RangeSource, max_bytes: int = MAX_CACHED) -> None:
        self.source = source
        self.url = source.url
        self.max_chunks = max(1, max_bytes // CHUNK)
        self.size: int | None = None
        self._chunks: OrderedDict[int, bytes] = OrderedDict()
        self._lock = threading.RLock()

    @property
    def read_bytes(self) -> int:
        """Bytes fetched from the reference (cache hits not counted)."""
        return self.source.read_bytes

    def get(self, start: int, length: int) -> tuple[bytes, int]:
        """``length`` bytes from ``start`` (fewer at the end) and the file's size."""
        if self.size is None:
            self._fetch(0, 1)  # learns the size, and keeps the first chunk
        assert self.size is not None
        end = min(start + length, self.size)
        first, last = start // CHUNK, (max(end, start + 1) - 1) // CHUNK
        with self._lock:
            missing = [i for i in range(first, last + 1) if i not in self._chunks]
        while missing:
            run = 1
            while run < len(missing) and missing[run] == missing[0] + run:
                run += 1
            self._fetch(missing[0], run)
            missing = missing[run:]
        with self._lock:
            parts = []
            for i in range(first, last + 1):
                chunk = self._chunks.get(i)
                if chunk is None:  # pushed out by a concurrent reader: fetch it alone
                    self._fetch(i, 1)
                    chunk = self._chunks[i]
                self._chunks.move_to_end(i)
                parts.append(chunk)
        data = b"".join(parts)
        offset = start - first * CHUNK
        return data[offset : offset + max(0, end - start)], self.size

    def _fetch(self, index: int, count: int) -> None:
        data, size = self.source.get(index * CHUNK, count * CHUNK)
        self.size = size
        with self._lock:
            for i in range(count):
                piece = data[i * CHUNK : (i + 1) * CHUNK]
                if not piece:
                    break
                self._chunks[index + i] = piece
                self._chunks.move_to_end(index + i)
            while len(self._chunks) > self.max_chunks:
                self._chunks.popitem(last=False)
