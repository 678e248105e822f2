"""The local-directory job store: one directory per job, on a volume replicas may share."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from service.errors import NotFound, StorageFailed
from service.jobs import eviction
from service.jobs.base import BaseJobStore
from service.jobs.eviction import Room
from service.jobs.pack import PACK, read_packed, write_pack
from service.jobs.record import JobRecord, is_job_id, new_id
from service.jobs.store import (
    FILE_NAME,
    GONE,
    Arrays,
    FileCheck,
    Files,
    StoredFile,
    file_size,
    place_file,
)

log = logging.getLogger(__name__)

# Staging directories and download pins older than this were left by a crash.
_STALE_S = 3600.0


def _mtime(path: Path) -> float:
    with contextlib.suppress(OSError):
        return path.stat().st_mtime
    return 0.0


def _dir_bytes(path: Path) -> int:
    """Bytes in a job directory's files (a job directory has no subdirectories)."""
    total = 0
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    total += entry.stat(follow_symlinks=False).st_size
    except OSError:
        pass
    return total


class LocalJobStore(BaseJobStore):
    """Jobs in a directory: ``<root>/<id[:2]>/<id>/`` holds ``meta.json``, the pack and files.

    A job is written whole under ``.tmp`` and renamed into place, so a reader
    sees the complete job or none.

    Args:
        root: the store's directory (created if missing).
        ttl_s: how long a job is kept.
        fsync: flush files to disk before a job becomes visible.
        write_behind: :meth:`save_soon` answers from memory and writes in the background.
        min_free_bytes: delete the oldest finished jobs before their TTL rather
            than leave less free space than this on the volume (0: never).
        max_bytes: delete the oldest finished jobs before their TTL rather than
            let the jobs this process knows of take more than this (0: no cap).
        on_evict: called with the number of jobs deleted to make room (metrics).
        scan: count the jobs already there (off for a short-lived reader, such
            as a footprints worker process, which must not walk a large store).
    """

    def __init__(
        self,
        root: Path,
        ttl_s: float,
        fsync: bool = True,
        write_behind: bool = False,
        min_free_bytes: int = 0,
        max_bytes: int = 0,
        on_evict: Callable[[int], None] | None = None,
        scan: bool = True,
    ) -> None:
        super().__init__(ttl_s, write_behind, Room(root, min_free_bytes, max_bytes, on_evict))
        self.root = root
        self.fsync = fsync
        self._tmp = root / ".tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        found = self._job_dirs() if scan else []
        self._count = len(found)
        if self.room.enabled:
            # Sizes matter only to the byte cap; free space comes from the volume.
            for path in sorted(found, key=_mtime):
                self.room.track(path.name, _dir_bytes(path) if max_bytes else 0)

    @property
    def address(self) -> str:
        """The store's directory."""
        return str(self.root)

    @staticmethod
    def new_id() -> str:
        """A fresh unguessable job id (see :func:`service.jobs.record.new_id`)."""
        return new_id()

    def _dir(self, job_id: str) -> Path:
        if not is_job_id(job_id):
            raise NotFound("no such job")
        return self.root / job_id[:2] / job_id

    def _has(self, job_id: str) -> bool:
        return (self._dir(job_id) / "meta.json").exists()

    def _meta(self, job_id: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self._dir(job_id) / "meta.json").read_bytes())
        return data

    def _job_ids(self) -> Iterator[str]:
        return (path.name for path in self._job_dirs())

    def _job_dirs(self) -> list[Path]:
        return [
            p
            for shard in self.root.iterdir()
            if shard.is_dir() and shard.name != ".tmp"
            for p in shard.iterdir()
            if is_job_id(p.name)
        ]

    def save(
        self, record: JobRecord, arrays: Arrays, files: Files | None = None, check: FileCheck = None
    ) -> None:
        """Write a job whole, then make it visible in one rename.

        ``files`` are kept beside the arrays (e.g. a scene's input); ``check`` is
        called with their staged paths, and an exception from it leaves no trace.
        """
        final = self._dir(record.id)
        size = sum(a.nbytes for a in arrays.values()) + sum(map(file_size, (files or {}).values()))
        staging = self._tmp / f"{record.id}.{secrets.token_hex(4)}"
        try:
            # Parents too: the store's folder may have been removed under a running
            # server. Before make_room, whose statvfs needs the folder.
            staging.mkdir(parents=True)
            self.make_room(size)
            for name in arrays:
                if not FILE_NAME.match(name):
                    raise ValueError(f"bad layer name {name!r}")
            if arrays:
                record.packed = self._write(staging / PACK, lambda f: write_pack(f, arrays))
            for name, data in (files or {}).items():
                if not FILE_NAME.match(name):
                    raise ValueError(f"bad file name {name!r}")
                place_file(data, staging / name, self.fsync)
            if check is not None:
                check([staging / name for name in files or {}])
            meta = json.dumps(asdict(record), separators=(",", ":")).encode()
            self._write(staging / "meta.json", lambda f: f.write(meta))
            final.parent.mkdir(exist_ok=True)
            os.rename(staging, final)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            log.error("job %s could not be stored: %s", record.id[:6], exc.strerror or exc)
            raise StorageFailed("the result could not be stored (server storage error)") from None
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._count += 1
        if self.room.enabled:
            # The data plus about what headers and meta.json add (no stat calls).
            self.room.track(record.id, size + 1024 * (len(arrays) + 1))

    def update(self, record: JobRecord) -> None:
        """Replace a job's record atomically (state, progress, layers)."""
        self.pending.settle(record.id)
        record.updated = time.time()
        directory = self._dir(record.id)
        if not directory.is_dir():
            raise NotFound("no such job (it may have been deleted)")
        tmp = directory / f".meta.{secrets.token_hex(4)}.tmp"
        meta = json.dumps(asdict(record), separators=(",", ":")).encode()
        try:
            self._write(tmp, lambda f: f.write(meta))
            os.replace(tmp, directory / "meta.json")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if record.finished and self.room.max_bytes:
            self.room.track(record.id, _dir_bytes(directory))  # a scene's outputs are in now

    def file(self, record: JobRecord, name: str) -> Path:
        """Where a job's file is (this backend only; callers use :meth:`open_file`)."""
        if not FILE_NAME.match(name) or name.startswith("."):
            raise NotFound(f"job has no file {name!r}")
        self.pending.settle(record.id)
        return self._dir(record.id) / name

    def open_file(self, record: JobRecord, name: str) -> StoredFile:
        """One of a job's files, open: it reads whole even if the job is deleted meanwhile."""
        try:
            stream: BinaryIO = open(self.file(record, name), "rb")  # noqa: SIM115
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(GONE) from None
        return StoredFile(name, os.fstat(stream.fileno()).st_size, stream)

    @property
    def upload_dir(self) -> Path:
        """The staging folder: uploads linked from there into a job are not copied."""
        return self._tmp

    def workspace(self, record: JobRecord) -> Path:
        """The job's own directory: files a running job writes there are its files."""
        return self._dir(record.id)

    def free_bytes(self) -> int:
        """Bytes still free on the store's volume."""
        return eviction.free_bytes(self.root)

    def pin(self, record: JobRecord, name: str) -> tuple[Path, bool]:
        """A private hard link to a job's file, for a path reader that must outlive a delete.

        ``(link, True)``, which the caller unlinks (:meth:`cleanup` removes any a
        crash left), or ``(the file, False)`` without hard links; NotFound if gone.
        """
        path = self.file(record, name)
        pinned = self._tmp / f"pin-{secrets.token_hex(8)}-{name}"
        try:
            os.link(path, pinned)
        except FileNotFoundError:
            raise NotFound(GONE) from None
        except OSError:  # no hard links here (EPERM, ENOTSUP, EXDEV...)
            if not path.is_file():
                raise NotFound(GONE) from None
            return path, False
        return pinned, True

    def _write(self, path: Path, write: Callable[[BinaryIO], Any]) -> Any:
        """Create ``path``, fill it with ``write(file)`` and return what that returned."""
        with open(path, "wb") as f:
            result = write(f)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        return result

    def _read_array(self, record: JobRecord, offset: int) -> np.ndarray:
        """An array of the job's pack, memory-mapped (read-only)."""
        try:
            return read_packed(self._dir(record.id) / PACK, offset)
        except FileNotFoundError:
            # Deleted (TTL, DELETE, or to make room) after its record was read.
            raise NotFound(GONE) from None

    def delete(self, job_id: str) -> bool:
        """Remove a job; True if it existed."""
        path = self._dir(job_id)
        self.pending.settle(job_id)
        if not path.exists():
            self.room.untrack(job_id)
            return False
        # Rename first so readers never see a half-deleted job.
        doomed = self._tmp / f"del-{job_id}.{secrets.token_hex(4)}"
        try:
            os.rename(path, doomed)
        except OSError:
            return False
        shutil.rmtree(doomed, ignore_errors=True)
        self._count = max(0, self._count - 1)
        self.room.untrack(job_id)
        return True

    def _sweep(self, now: float) -> None:
        """Remove staging directories and download pins a crash left."""
        for stale in self._tmp.iterdir():
            # A pin's ctime is when it was linked.
            try:
                info = stale.lstat()
            except FileNotFoundError:
                continue
            if max(info.st_mtime, info.st_ctime) >= now - _STALE_S:
                continue
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
