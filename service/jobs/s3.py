"""The object-store job store: jobs as objects in an S3-API bucket that replicas share.

Each job is ``<prefix>/<id>/`` holding ``meta.json``, the pack of arrays and its
files (a scene's input and output COGs). ``meta.json`` is written last, so a job
is visible only once whole; a write cut short leaves objects nobody sees, which
:meth:`S3JobStore.cleanup` removes. Running scene jobs work in a local scratch
directory; their outputs are uploaded when they finish.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
import obstore
from obstore.exceptions import BaseError
from obstore.store import S3Store

from service.errors import NotFound, StorageFailed
from service.jobs import eviction
from service.jobs.base import BaseJobStore
from service.jobs.eviction import Room
from service.jobs.objects import (
    MAX_FETCH,
    PackParts,
    connect,
    download,
    open_object,
    read_array,
    reading,
    upload_parts,
)
from service.jobs.pack import PACK, write_pack
from service.jobs.record import FINAL_STATES, JobRecord, is_job_id
from service.jobs.store import (
    FILE_NAME,
    Arrays,
    FileCheck,
    Files,
    StoredFile,
    file_size,
    place_file,
)

log = logging.getLogger(__name__)

META = "meta.json"
# Objects of a job without its meta.json older than this were left by a crash.
_STALE_S = 3600.0
# Requests' uploads, in the scratch directory.
UPLOADS = ".uploads"
# Leeway between this server's clock and the object store's timestamps.
_CLOCK_SKEW_S = 300.0
# What a running job writes to its scratch directory and never keeps.
_TEMPORARY = (".partial.tif", ".tmp", ".part", ".ovr")


@dataclass
class _Listed:
    """What a listing shows of one job's objects."""

    visible: bool = False
    size: int = 0
    modified: float = 0.0
    meta_modified: float = 0.0


def _storage_failed(job_id: str, exc: BaseException) -> StorageFailed:
    log.error("job %s could not be stored: %s", job_id[:6], str(exc).splitlines()[0][:300])
    return StorageFailed("the result could not be stored (object store error)")


class S3JobStore(BaseJobStore):
    """Jobs in an S3-API bucket (AWS S3, GCS's S3 API, MinIO, Ceph, SeaweedFS).

    Args:
        url: ``s3://bucket/prefix``.
        scratch: a local directory for running scene jobs' files (None: a
            reader that runs no jobs).
        ttl_s: how long a job is kept.
        write_behind: :meth:`save_soon` answers from memory and writes in the background.
        max_bytes: delete the oldest finished jobs before their TTL rather than
            let the jobs this process knows of take more than this (0: no cap).
        on_evict: called with the number of jobs deleted to make room (metrics).
        presign_s: how long presigned download URLs last (0: no presigned URLs).
        scan: list the bucket at start to count its jobs (off for a short-lived reader).
        store: the client (made from ``url`` and the AWS variables when None).
    """

    def __init__(
        self,
        url: str,
        scratch: Path | None,
        ttl_s: float,
        write_behind: bool = False,
        max_bytes: int = 0,
        on_evict: Callable[[int], None] | None = None,
        presign_s: float = 0.0,
        scan: bool = True,
        store: S3Store | None = None,
    ) -> None:
        super().__init__(ttl_s, write_behind, Room(scratch or Path("."), 0, max_bytes, on_evict))
        self.url = url.rstrip("/")
        self.objects = store if store is not None else connect(self.url)
        self.scratch = scratch
        self.presign_s = presign_s
        if scratch is not None:
            scratch.mkdir(parents=True, exist_ok=True)
        if scan:
            listed = self._listing()
            visible = sorted(
                (job for job in listed.items() if job[1].visible), key=lambda job: job[1].modified
            )
            self._count = len(visible)
            for job_id, job in visible:
                self.room.track(job_id, job.size)

    @property
    def address(self) -> str:
        """The store's ``s3://bucket/prefix`` URL."""
        return self.url

    def _key(self, job_id: str, name: str) -> str:
        if not is_job_id(job_id):
            raise NotFound("no such job")
        return f"{job_id}/{name}"

    def _listing(self) -> dict[str, _Listed]:
        """Every job in the bucket with its bytes and last change (one paginated LIST)."""
        jobs: dict[str, _Listed] = {}
        try:
            for batch in obstore.list(self.objects):
                for meta in batch:
                    job_id, _, name = meta["path"].partition("/")
                    if not is_job_id(job_id):
                        continue
                    job = jobs.setdefault(job_id, _Listed())
                    if name == META:
                        job.visible = True
                        job.meta_modified = meta["last_modified"].timestamp()
                    job.size += meta["size"]
                    job.modified = max(job.modified, meta["last_modified"].timestamp())
        except BaseError as exc:
            # An OSError, as a directory that cannot be walked: callers log it and go on.
            raise OSError(
                f"{self.url} cannot be listed: {str(exc).splitlines()[0][:300]}"
            ) from None
        return jobs

    def _job_ids(self) -> Iterator[str]:
        return (job_id for job_id, job in self._listing().items() if job.visible)

    def _expiry_candidates(self, now: float) -> list[str]:
        """Jobs whose ``meta.json`` is older than the TTL: only theirs are read.

        A record is written with an expiry at most the TTL ahead, so a younger
        one has not expired (under a replica with a shorter TTL it may have:
        that replica's cleanup deletes it, and reads refuse it meanwhile).
        """
        oldest = now - self.ttl_s + _CLOCK_SKEW_S
        listed = self._listing().items()
        return [job_id for job_id, job in listed if job.visible and job.meta_modified <= oldest]

    def _has(self, job_id: str) -> bool:
        key = self._key(job_id, META)
        try:
            with reading():
                obstore.head(self.objects, key)
        except NotFound:
            return False
        return True

    def _meta(self, job_id: str) -> dict[str, Any]:
        key = self._key(job_id, META)
        try:
            with reading():
                data = obstore.get(self.objects, key).bytes()
        except NotFound:
            raise FileNotFoundError(job_id) from None
        meta: dict[str, Any] = json.loads(bytes(data))
        return meta

    def _put_meta(self, record: JobRecord) -> None:
        meta = json.dumps(asdict(record), separators=(",", ":")).encode()
        obstore.put(self.objects, self._key(record.id, META), meta)

    def save(
        self, record: JobRecord, arrays: Arrays, files: Files | None = None, check: FileCheck = None
    ) -> None:
        """Upload a job's arrays and files, then its ``meta.json``: visible whole or not at all.

        ``files`` are staged in the job's scratch directory first (where a
        scene job reads its input) and ``check`` is called with their paths; an
        exception from it leaves no trace.
        """
        size = sum(a.nbytes for a in arrays.values()) + sum(map(file_size, (files or {}).values()))
        for name in [*arrays, *(files or {})]:
            if not FILE_NAME.match(name) or name.startswith("."):
                raise ValueError(f"bad layer or file name {name!r}")
        self.make_room(size)
        staged: list[Path] = []
        try:
            if files:
                directory = self.workspace(record, fetch=False)
                for name, data in files.items():
                    place_file(data, directory / name)
                    staged.append(directory / name)
                if check is not None:
                    check(staged)
                for path in staged:
                    # From the staged file: in parts past MAX_FETCH, a few at a time.
                    obstore.put(
                        self.objects,
                        self._key(record.id, path.name),
                        path,
                        chunk_size=MAX_FETCH,
                        max_concurrency=2,
                    )
            if arrays:
                pack = PackParts()
                record.packed = write_pack(cast(BinaryIO, pack), arrays)
                upload_parts(self.objects, self._key(record.id, PACK), pack)
            self._put_meta(record)
        except BaseException as exc:
            self._forget(record.id)
            if isinstance(exc, BaseError | OSError):
                raise _storage_failed(record.id, exc) from None
            raise
        self._count += 1
        if self.room.enabled:
            self.room.track(record.id, size + 1024 * (len(arrays) + 1))

    def _forget(self, job_id: str) -> None:
        """Remove what a failed save put, objects and scratch alike (best effort)."""
        self._remove_scratch(job_id)
        try:
            keys = self._keys(job_id)
            if keys:
                obstore.delete(self.objects, keys)
        except BaseError as exc:
            log.warning("job %s: a failed save's objects stay until cleanup: %s", job_id[:6], exc)

    def _keys(self, job_id: str) -> list[str]:
        """Keys of a job's objects."""
        return [
            meta["path"]
            for batch in obstore.list(self.objects, prefix=f"{job_id}/")
            for meta in batch
        ]

    def update(self, record: JobRecord) -> None:
        """Replace a job's record; a job done has its outputs uploaded first.

        A finished job's scratch directory is removed (a failed or cancelled
        job's partial outputs with it).
        """
        self.pending.settle(record.id)
        record.updated = time.time()
        if not self._has(record.id):
            raise NotFound("no such job (it may have been deleted)")
        uploaded = 0
        try:
            if record.state == "done":
                uploaded = self._upload_outputs(record)
            self._put_meta(record)
        except (BaseError, OSError) as exc:
            raise _storage_failed(record.id, exc) from None
        if record.finished:
            self._remove_scratch(record.id)
            if self.room.max_bytes and uploaded:
                self.room.track(record.id, uploaded)  # its outputs are in now

    def _upload_outputs(self, record: JobRecord) -> int:
        """Upload the files a running job wrote to its scratch directory; the job's bytes.

        The bytes count its input too (0 when the scratch is already gone).
        """
        if self.scratch is None:
            return 0
        directory = self.scratch / record.id
        inputs = set(record.params.get("inputs", []))
        total = 0
        paths = sorted(directory.iterdir()) if directory.is_dir() else []
        for path in paths:
            name = path.name
            if name.startswith(".") or name.endswith(_TEMPORARY) or not FILE_NAME.match(name):
                continue
            if not path.is_file():
                continue
            if name not in inputs:
                # A path is streamed in parts: a COG of gigabytes never sits in memory.
                obstore.put(self.objects, self._key(record.id, name), path)
            total += path.stat().st_size
        return total

    def open_file(self, record: JobRecord, name: str) -> StoredFile:
        """One of a job's files, read through ranged GETs as it is asked for."""
        return open_object(self.objects, self._file_key(record, name), name)

    def _file_key(self, record: JobRecord, name: str) -> str:
        if not FILE_NAME.match(name) or name.startswith(".") or name in (META, PACK):
            raise NotFound(f"job has no file {name!r}")
        self.pending.settle(record.id)
        return self._key(record.id, name)

    def presign(self, record: JobRecord, name: str) -> str | None:
        """A presigned GET URL of one of a job's files (None when presigning is off)."""
        if not self.presign_s:
            return None
        key = self._file_key(record, name)
        with reading(f"job has no file {name!r}"):
            obstore.head(self.objects, key)
        return obstore.sign(self.objects, "GET", key, timedelta(seconds=self.presign_s))

    @property
    def upload_dir(self) -> Path:
        """``.uploads`` in the scratch directory (swept of what a crash left)."""
        if self.scratch is None:
            raise RuntimeError("this store is a reader: it has no scratch directory")
        return self.scratch / UPLOADS

    def workspace(self, record: JobRecord, fetch: bool = True) -> Path:
        """The job's scratch directory, with its input files (downloaded when missing)."""
        if self.scratch is None:
            raise RuntimeError("this store is a reader: it has no scratch directory")
        directory = self.scratch / record.id
        directory.mkdir(parents=True, exist_ok=True)
        for name in record.params.get("inputs", []) if fetch else []:
            if not (directory / name).exists():
                download(self.objects, self._key(record.id, name), directory / name)
        return directory

    def free_bytes(self) -> int:
        """Bytes still free on the scratch volume (where running jobs write)."""
        return eviction.free_bytes(self.scratch or Path("."))

    def _read_array(self, record: JobRecord, offset: int) -> np.ndarray:
        return read_array(self.objects, self._key(record.id, PACK), offset)

    def delete(self, job_id: str) -> bool:
        """Remove a job: its ``meta.json`` first, so it disappears at once; True if it existed."""
        key = self._key(job_id, META)
        self.pending.settle(job_id)
        existed = self._has(job_id)
        try:
            if existed:
                obstore.delete(self.objects, key)
            rest = self._keys(job_id)
            if rest:
                obstore.delete(self.objects, rest)
        except BaseError as exc:
            log.warning("job %s not deleted whole: %s", job_id[:6], exc)
        self._remove_scratch(job_id)
        self.room.untrack(job_id)
        if existed:
            self._count = max(0, self._count - 1)
        return existed

    def _remove_scratch(self, job_id: str) -> None:
        if self.scratch is not None:
            shutil.rmtree(self.scratch / job_id, ignore_errors=True)

    def _sweep(self, now: float) -> None:
        """Remove objects of writes a crash cut short, and scratch of jobs that are over."""
        for job_id, job in self._listing().items():
            if not job.visible and job.modified < now - _STALE_S:
                self._forget(job_id)
        if self.scratch is None:
            return
        uploads = self.scratch / UPLOADS
        for path in uploads.iterdir() if uploads.is_dir() else ():
            if _age_s(path) >= _STALE_S:
                path.unlink(missing_ok=True)
        for path in self.scratch.iterdir():
            if not is_job_id(path.name) or _age_s(path) < _STALE_S:
                continue
            try:
                state = self._meta(path.name)["state"]
            except (OSError, ValueError, KeyError, TypeError):
                state = "gone"
            if state in FINAL_STATES or state == "gone":
                shutil.rmtree(path, ignore_errors=True)


def _age_s(path: Path) -> float:
    """Seconds since ``path`` last changed (0 when it cannot be read)."""
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0
