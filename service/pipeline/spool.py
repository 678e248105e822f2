"""Uploads spooled to disk for the length of a request, never read whole into memory.

The multipart parser keeps each uploaded file in a temporary file past its
first megabyte; a request's images larger than a few megabytes are copied from
there, in chunks, to files in the job store's upload folder, on the volume jobs
are stored on (smaller ones are read into memory, as a tile's request is). A
synchronous request decodes its image from that file (its memory is the decoded
pixels, reserved from the budget, not the file as well); a scene job's store
links the file into the job (or copies it where it cannot), so a large scene
costs the server disk, not memory, from upload to the last tile. The files go
when the request ends, answered or refused.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import shutil
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

from service.errors import StorageFailed

log = logging.getLogger(__name__)

# Bytes copied at a time from the parser's temporary file.
COPY_CHUNK = 1 << 20
# Uploads up to this size are read into memory (a small tile's request costs no
# file); larger ones are spooled. The parser keeps its first megabyte in memory too.
IN_MEMORY_MAX = 4 << 20


class UploadSpool:
    """The files one request's uploads were copied to; removed when the request ends.

    Args:
        directory: where the files go (the job store's upload folder).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.paths: list[Path] = []

    async def take(self, upload: BinaryIO, size: int | None = None) -> bytes | Path:
        """An uploaded file's bytes when small, else the path of a file it was copied to.

        Args:
            upload: the parser's temporary file, read from its start.
            size: its size in bytes, where known (None: measured).
        """
        if size is None:
            size = upload.seek(0, 2)
        if size <= IN_MEMORY_MAX:
            upload.seek(0)
            return await asyncio.to_thread(upload.read)
        path = self.directory / f"upload-{secrets.token_hex(8)}.tif"
        self.paths.append(path)
        try:
            await asyncio.to_thread(_copy, upload, path)
        except OSError as exc:
            log.error("an upload could not be spooled to %s: %s", self.directory, exc.strerror)
            raise StorageFailed("the upload could not be stored (server storage error)") from None
        return path

    def remove(self) -> None:
        """Remove the spooled files (those a job store linked stay in the job)."""
        for path in self.paths:
            path.unlink(missing_ok=True)
        self.paths.clear()

    def __enter__(self) -> UploadSpool:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.remove()


def _copy(source: BinaryIO, path: Path) -> None:
    source.seek(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "xb") as out:
        shutil.copyfileobj(source, out, COPY_CHUNK)
