"""Objects in an S3-API store: the client, ranged reads as a file, arrays of a pack, downloads.

The client is obstore (Rust's ``object_store``): one small wheel with no
dependencies, typed, that reads the standard AWS variables (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``, and web-identity
tokens as Kubernetes mounts them) and signs URLs without a network call.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO, cast
from urllib.parse import urlsplit

import numpy as np
import obstore
from obstore.exceptions import BaseError, NotFoundError
from obstore.store import S3Store

from service.errors import NotFound, StorageFailed
from service.jobs.store import GONE, StoredFile

# What a read of an object that is not there raises (obstore raises the builtin
# for some operations and its own class for others).
MISSING = (NotFoundError, FileNotFoundError)
# Bytes fetched for an array's .npy header: a header is 64-byte aligned and
# rarely over 128 bytes, and a small array comes along in the same request.
HEADER_PROBE = 64 * 1024
# The least and most one ranged GET of a file fetches (see RangedReader).
MIN_FETCH = 64 * 1024
MAX_FETCH = 8 * 1024 * 1024


log = logging.getLogger(__name__)


@contextlib.contextmanager
def reading(missing: str = GONE) -> Iterator[None]:
    """Turn a missing object into NotFound(``missing``), other store errors into StorageFailed."""
    try:
        yield
    except MISSING:
        raise NotFound(missing) from None
    except BaseError as exc:
        log.error("object store read failed: %s", str(exc).splitlines()[0][:300])
        raise StorageFailed("the job store could not be read (object store error)") from None


def parse_url(url: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of ``s3://bucket/prefix``; ValueError for anything else."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise ValueError(f"not an s3://bucket/prefix URL: {url!r}")
    return parts.netloc, parts.path.strip("/")


def connect(url: str) -> S3Store:
    """A client for ``s3://bucket/prefix``, configured from the standard AWS variables.

    Plain ``http://`` endpoints (MinIO, SeaweedFS in a cluster) are allowed
    when the endpoint variable names one; requests give up after 30 s of retries.
    """
    bucket, prefix = parse_url(url)
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL", "")
    return S3Store(
        bucket,
        prefix=prefix or None,
        client_options={
            "allow_http": endpoint.startswith("http://"),
            "connect_timeout": timedelta(seconds=5),
            "timeout": timedelta(seconds=120),
        },
        retry_config={"max_retries": 3, "retry_timeout": timedelta(seconds=30)},
    )


class RangedReader(io.RawIOBase):
    """An object read through ranged GETs that grow while the reading runs on.

    A read after a jump elsewhere fetches what it asks for, at least
    ``MIN_FETCH``; each further read that carries on where the fetched bytes
    end doubles the next fetch, up to ``MAX_FETCH``. So GDAL's scattered reads
    of a COG's header and tiles fetch little, and a download streams in large GETs.
    """

    def __init__(self, store: S3Store, key: str, size: int) -> None:
        super().__init__()
        self.store = store
        self.key = key
        self.size = size
        self._at = 0
        self._held = memoryview(b"")
        self._held_at = 0
        self._fetch = MIN_FETCH // 2

    def readable(self) -> bool:
        """Always readable."""
        return True

    def seekable(self) -> bool:
        """Always seekable."""
        return True

    def tell(self) -> int:
        """The current position."""
        return self._at

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Move the position, as :meth:`io.IOBase.seek`."""
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._at, os.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._at = base + offset
        return self._at

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes from the current position (all that is left for -1)."""
        left = self.size - self._at
        want = left if size is None or size < 0 else min(size, left)
        parts = []
        while want > 0:
            offset = self._at - self._held_at
            if not 0 <= offset < len(self._held):
                self._get(want)
                continue
            piece = self._held[offset : offset + want]
            parts.append(bytes(piece))
            self._at += len(piece)
            want -= len(piece)
        return b"".join(parts)

    def _get(self, want: int) -> None:
        carries_on = self._at == self._held_at + len(self._held)
        self._fetch = min(2 * self._fetch, MAX_FETCH) if carries_on else MIN_FETCH
        length = min(max(want, self._fetch), self.size - self._at)
        with reading():
            data = obstore.get_range(self.store, self.key, start=self._at, length=length)
        if not len(data):
            raise OSError(f"{self.key} ended before its size")
        self._held, self._held_at = memoryview(data), self._at

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        """Fill ``buffer`` from the current position."""
        data = self.read(len(buffer))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)


def open_object(store: S3Store, key: str, name: str) -> StoredFile:
    """An object open for reading through ranged GETs; NotFound if it is not there.

    Unlike a local file, an object deleted while it is read cannot be read to its end.
    """
    with reading():
        size = obstore.head(store, key)["size"]
    return StoredFile(name, size, cast(BinaryIO, RangedReader(store, key, size)))


class PackParts:
    """A write-only file that keeps what is written as views, uncopied: a pack to upload.

    ``write_pack`` writes each array's memory in slices; those slices are kept
    as they are, so a job's arrays are never copied whole to be uploaded.
    """

    def __init__(self) -> None:
        self.parts: list[memoryview] = []
        self.size = 0

    def write(self, data: bytes | memoryview) -> int:
        """Keep ``data`` (a view of it) as the next part."""
        view = memoryview(data).cast("B")
        self.parts.append(view)
        self.size += len(view)
        return len(view)

    def tell(self) -> int:
        """Bytes written so far."""
        return self.size


def upload_parts(store: S3Store, key: str, parts: PackParts) -> None:
    """Upload what a :class:`PackParts` holds: in one PUT, or in parts past ``MAX_FETCH``."""
    if parts.size <= MAX_FETCH:
        obstore.put(store, key, b"".join(parts.parts))
    else:
        # A multipart upload holds a few parts at a time, never the whole pack.
        obstore.put(
            store,
            key,
            iter(parts.parts),
            use_multipart=True,
            chunk_size=MAX_FETCH,
            max_concurrency=2,
        )


def read_array(store: S3Store, key: str, offset: int) -> np.ndarray:
    """The array whose ``.npy`` image starts at ``offset`` in the pack ``key``, read-only.

    One ranged GET for the header (and a small array with it), one more for a larger array.
    """
    with reading():
        head = memoryview(obstore.get_range(store, key, start=offset, length=HEADER_PROBE))
        stream = io.BytesIO(head)
        version = np.lib.format.read_magic(stream)
        if version != (1, 0):
            raise ValueError(f"unexpected .npy version {version} in {key}")
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        data_at = stream.tell()
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if nbytes == 0:
            data: memoryview | bytes = b""
        elif data_at + nbytes <= len(head):
            data = head[data_at : data_at + nbytes]
        else:
            data = memoryview(obstore.get_range(store, key, start=offset + data_at, length=nbytes))
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    array.flags.writeable = False
    return array


def download(store: S3Store, key: str, path: Path) -> None:
    """Copy an object to a local file, streamed; the file appears whole or not at all."""
    part = path.with_name(f".{path.name}.part")
    try:
        with reading(), open(part, "wb") as f:
            for chunk in obstore.get(store, key).stream(min_chunk_size=MAX_FETCH):
                f.write(chunk)
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)
