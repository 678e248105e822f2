"""The job store's interface: what the service needs from wherever jobs are kept."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol

import numpy as np

from service.jobs.pack import write_chunked
from service.jobs.record import JobRecord

if TYPE_CHECKING:
    from service.config import Settings

GONE = "no such job (it was deleted while being read)"
CHUNK = 64 * 1024
# What a job's file or array may be called in every store: a plain name, never a path.
FILE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

Arrays = dict[str, np.ndarray]
"""A job's arrays by layer name."""
Files = dict[str, bytes | Path]
"""A job's files by name (e.g. a scene's input): bytes, or a local file to take them from."""
FileCheck = Callable[[list[Path]], None] | None
"""Called with local copies of a job's files before the job becomes visible; raises to refuse."""


def file_size(data: bytes | Path) -> int:
    """Bytes of one of a job's files as given to ``save``."""
    return data.stat().st_size if isinstance(data, Path) else len(data)


def place_file(data: bytes | Path, target: Path, fsync: bool = False) -> None:
    """Create ``target`` with a job's file: bytes written, a local file hard-linked or copied.

    A file is linked where it is on the same volume (no copy, however large), copied
    otherwise; the caller's file is left as it was either way.
    """
    if isinstance(data, Path):
        try:
            os.link(data, target)
        except OSError:
            shutil.copyfile(data, target)
        if fsync:
            with open(target, "rb") as f:
                os.fsync(f.fileno())
        return
    with open(target, "wb") as f:
        write_chunked(f, data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())


class StoredFile:
    """A job's file opened for reading: a seekable binary stream that knows its size.

    It reads the file as it was when opened, even if the job is deleted meanwhile.
    """

    def __init__(self, name: str, size: int, stream: BinaryIO) -> None:
        self.name = name
        self.size = size
        self._stream = stream

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes from the current position (all that is left for -1)."""
        return self._stream.read(size)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Move the position, as :meth:`io.IOBase.seek`."""
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        """The current position."""
        return self._stream.tell()

    @property
    def closed(self) -> bool:
        """Whether the stream is closed."""
        return self._stream.closed

    def close(self) -> None:
        """Close the stream."""
        self._stream.close()

    def chunks(self, start: int = 0, end: int | None = None, size: int = CHUNK) -> Iterator[bytes]:
        """Bytes ``start`` to ``end`` (exclusive; None: the end), ``size`` at a time."""
        stop = self.size if end is None else min(end, self.size)
        self._stream.seek(start)
        at = start
        while at < stop:
            data = self._stream.read(min(size, stop - at))
            if not data:
                break
            at += len(data)
            yield data

    def __enter__(self) -> StoredFile:
        return self

    def __del__(self) -> None:
        # A download dropped unsent (its client left first) still closes its file.
        with contextlib.suppress(Exception):
            self._stream.close()

    def __exit__(self, *exc: object) -> None:
        self.close()


class JobStore(Protocol):
    """Where jobs are kept: records, arrays and files, until their TTL runs out.

    A job becomes visible whole or not at all. ``address`` names the store so
    that another process can open it (:func:`open_reader`).
    """

    ttl_s: float
    write_behind: bool

    @property
    def address(self) -> str:
        """Where the store lives, enough for :func:`open_reader` in another process."""
        ...

    @property
    def count(self) -> int:
        """Jobs currently stored (as counted by this process)."""
        ...

    def new_record(
        self, model: dict[str, str], kind: str, owner: str | None, job_id: str | None = None
    ) -> JobRecord:
        """A record for a job created now, expiring after the TTL."""
        ...

    def exists(self, job_id: str) -> bool:
        """Whether a job is stored or being written behind here (no owner check)."""
        ...

    def save(
        self, record: JobRecord, arrays: Arrays, files: Files | None = None, check: FileCheck = None
    ) -> None:
        """Store a job whole; ``check`` sees local copies of ``files`` before it is visible."""
        ...

    def save_soon(self, record: JobRecord, arrays: Arrays) -> None:
        """Store a job, in the background where write-behind is on."""
        ...

    def settle(self, job_id: str) -> None:
        """Wait until a job written behind is stored, for a reader in another process."""
        ...

    def flush(self) -> None:
        """Wait for every job being written behind (on shutdown)."""
        ...

    def update(self, record: JobRecord) -> None:
        """Replace a job's record atomically; a finished one keeps its workspace's files."""
        ...

    def load(self, job_id: str, owner: str | None = None, any_owner: bool = False) -> JobRecord:
        """The job's record; NotFound for no such job, expired, or another owner's."""
        ...

    def array(self, record: JobRecord, name: str) -> np.ndarray:
        """One stored array of a job, read-only."""
        ...

    def open_file(self, record: JobRecord, name: str) -> StoredFile:
        """One of a job's files for reading; NotFound when it is not there."""
        ...

    def presign(self, record: JobRecord, name: str) -> str | None:
        """A URL a client may fetch one of a job's files from directly; None where not offered."""
        ...

    @property
    def upload_dir(self) -> Path:
        """A local folder for requests' uploads, on the volume running jobs' files are on."""
        ...

    def workspace(self, record: JobRecord) -> Path:
        """A local directory with a running job's files; what it writes there is kept."""
        ...

    def free_bytes(self) -> int:
        """Bytes still free where running jobs write their files."""
        ...

    def delete(self, job_id: str) -> bool:
        """Remove a job; True if it existed."""
        ...

    def unfinished(self) -> list[JobRecord]:
        """Jobs left queued or running (e.g. by a stopped server), oldest first."""
        ...

    def cleanup(self) -> int:
        """Delete expired jobs and stale temporary files; returns jobs deleted."""
        ...


def open_store(settings: Settings, on_evict: Callable[[int], None] | None = None) -> JobStore:
    """The job store the settings name: ``ATTNSERVE_JOB_STORE`` or the local ``ATTNSERVE_JOB_DIR``.

    With an object store (``s3://bucket/prefix``) the job directory holds only
    running scene jobs' files.
    """
    # Backends are imported where chosen, so one needs no other's client libraries.
    if settings.job_store is not None and settings.job_store.startswith("s3://"):
        from service.jobs.s3 import S3JobStore

        return S3JobStore(
            settings.job_store,
            settings.job_dir,
            settings.job_ttl_s,
            write_behind=settings.job_write_behind,
            max_bytes=int(settings.job_max_mb * 2**20),
            on_evict=on_evict,
            presign_s=settings.presign_ttl_s if settings.presign else 0.0,
        )
    from service.jobs.local import LocalJobStore

    return LocalJobStore(
        Path(settings.job_store or settings.job_dir),
        settings.job_ttl_s,
        fsync=settings.job_fsync,
        write_behind=settings.job_write_behind,
        min_free_bytes=int(settings.job_min_free_mb * 2**20),
        max_bytes=int(settings.job_max_mb * 2**20),
        on_evict=on_evict,
    )


def open_reader(address: str) -> JobStore:
    """A store at ``address`` for a short-lived reader (it does not walk the jobs at start)."""
    if address.startswith("s3://"):
        from service.jobs.s3 import S3JobStore

        return S3JobStore(address, None, ttl_s=1.0, scan=False)
    from service.jobs.local import LocalJobStore

    return LocalJobStore(Path(address), ttl_s=1.0, scan=False)
