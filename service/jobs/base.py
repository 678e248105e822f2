"""What every job store does the same way: records, write-behind, TTL, owners and eviction.

A backend says how a job's metadata, arrays and files are read and written
(:class:`service.jobs.local.LocalJobStore`, :class:`service.jobs.s3.S3JobStore`);
this class decides what is visible, to whom and for how long.
"""

from __future__ import annotations

import abc
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import NotFound
from service.jobs.eviction import Room, expired
from service.jobs.record import FINAL_STATES, JobRecord, new_id
from service.jobs.store import Arrays, FileCheck, Files, StoredFile
from service.jobs.write_behind import WriteBehind

MISSING = "no such job (it may have expired, or been deleted early to make room)"
EXPIRED = "no such job (it may have expired)"


class BaseJobStore(abc.ABC):
    """A job store over a backend's reads and writes (see :class:`service.jobs.store.JobStore`).

    Args:
        ttl_s: how long a job is kept.
        write_behind: :meth:`save_soon` answers from memory and writes in the background.
        room: the byte cap and free-space floor that eviction keeps.
    """

    def __init__(self, ttl_s: float, write_behind: bool, room: Room) -> None:
        self.ttl_s = ttl_s
        self.write_behind = write_behind
        self.room = room
        # Late-bound, so the write a background thread makes is always this store's save.
        self.pending = WriteBehind(lambda record, arrays: self.save(record, arrays))
        self._count = 0

    # What a backend provides.

    @property
    @abc.abstractmethod
    def address(self) -> str:
        """Where the store lives, enough for :func:`service.jobs.store.open_reader`."""

    @abc.abstractmethod
    def save(
        self, record: JobRecord, arrays: Arrays, files: Files | None = None, check: FileCheck = None
    ) -> None:
        """Store a job whole; ``check`` sees local copies of ``files`` before it is visible."""

    @abc.abstractmethod
    def update(self, record: JobRecord) -> None:
        """Replace a job's record atomically; a finished one keeps its workspace's files."""

    @abc.abstractmethod
    def open_file(self, record: JobRecord, name: str) -> StoredFile:
        """One of a job's files for reading; NotFound when it is not there."""

    @property
    @abc.abstractmethod
    def upload_dir(self) -> Path:
        """A local folder for requests' uploads, on the volume running jobs' files are on."""

    @abc.abstractmethod
    def workspace(self, record: JobRecord) -> Path:
        """A local directory with a running job's files; what it writes there is kept."""

    @abc.abstractmethod
    def free_bytes(self) -> int:
        """Bytes still free where running jobs write their files."""

    @abc.abstractmethod
    def delete(self, job_id: str) -> bool:
        """Remove a job; True if it existed."""

    @abc.abstractmethod
    def _meta(self, job_id: str) -> dict[str, Any]:
        """A stored job's record as JSON; OSError (or ValueError) when it cannot be read."""

    @abc.abstractmethod
    def _has(self, job_id: str) -> bool:
        """Whether a job's record is stored (one cheap look, no read)."""

    @abc.abstractmethod
    def _job_ids(self) -> Iterable[str]:
        """Ids of the jobs visible in the store."""

    @abc.abstractmethod
    def _read_array(self, record: JobRecord, offset: int) -> np.ndarray:
        """The array whose ``.npy`` image starts at ``offset`` in the job's pack, read-only."""

    @abc.abstractmethod
    def _sweep(self, now: float) -> None:
        """Remove what crashed writes left behind (a backend's own temporary files)."""

    def presign(self, record: JobRecord, name: str) -> str | None:
        """A URL a client may fetch one of a job's files from directly, or None (not offered)."""
        return None

    # The same for every backend.

    def new_record(
        self, model: dict[str, str], kind: str, owner: str | None, job_id: str | None = None
    ) -> JobRecord:
        """A record for a job created now, expiring after the TTL."""
        now = time.time()
        return JobRecord(
            id=job_id or new_id(),
            model=model,
            kind=kind,
            created=now,
            expires=now + self.ttl_s,
            owner=owner,
        )

    @property
    def count(self) -> int:
        """Jobs currently stored (as counted by this process)."""
        return self._count

    @property
    def evicted(self) -> int:
        """Jobs deleted before their TTL to make room."""
        return self.room.evicted

    def exists(self, job_id: str) -> bool:
        """Whether a job is stored or being written behind here (no owner check)."""
        return job_id in self.pending or self._has(job_id)

    def make_room(self, size: int) -> int:
        """Delete the oldest finished jobs until ``size`` more bytes fit; returns how many.

        Jobs still queued or running, and jobs being written behind, are kept.
        """
        return self.room.make_room(size, self._evictable, self.delete)

    def _evictable(self, job_id: str) -> bool:
        if job_id in self.pending:
            return False
        try:
            state = self._meta(job_id)["state"]
        except (OSError, ValueError, KeyError, TypeError, NotFound):
            self.room.untrack(job_id)  # gone (another replica deleted it) or unreadable
            return False
        return state in FINAL_STATES

    def save_soon(self, record: JobRecord, arrays: Arrays) -> None:
        """Save a job: in the background with write-behind on, else now (as :meth:`save`).

        A failed background write is logged; the job then disappears.
        """
        if self.write_behind:
            self.pending.submit(record, arrays)
        else:
            self.save(record, arrays)

    def settle(self, job_id: str) -> None:
        """Wait until a job written behind is stored, for a reader in another process."""
        self.pending.settle(job_id)

    def flush(self) -> None:
        """Wait for every job being written behind (on shutdown)."""
        self.pending.flush()

    def load(self, job_id: str, owner: str | None = None, any_owner: bool = False) -> JobRecord:
        """The job's record.

        Raises:
            NotFound: no such job, expired, or made with another API key.
        """
        record = self.pending.record(job_id)
        if record is None:
            try:
                record = JobRecord(**self._meta(job_id))
            except (OSError, ValueError, TypeError):
                raise NotFound(MISSING) from None
        if expired(record.expires, record.state, time.time()):
            self.delete(job_id)
            raise NotFound(EXPIRED)
        if record.owner is not None and record.owner != owner and not any_owner:
            raise NotFound(EXPIRED)
        return record

    def array(self, record: JobRecord, name: str) -> np.ndarray:
        """One stored array of a job, read-only."""
        record.layer(name)
        held = self.pending.array(record.id, name)
        if held is not None:
            return held
        if name not in record.packed:
            raise NotFound(f"job has no stored array {name!r}")
        return self._read_array(record, record.packed[name])

    def unfinished(self) -> list[JobRecord]:
        """Jobs left queued or running (e.g. by a stopped server), oldest first."""
        found = []
        for job_id in self._job_ids():
            try:
                record = JobRecord(**self._meta(job_id))
            except (OSError, ValueError, TypeError):
                continue
            if not record.finished:
                found.append(record)
        return sorted(found, key=lambda r: r.created)

    def cleanup(self) -> int:
        """Delete expired jobs and what crashed writes left; returns jobs deleted."""
        now = time.time()
        removed = 0
        for job_id in list(self._expiry_candidates(now)):
            if self._expired(job_id, now) and self.delete(job_id):
                removed += 1
        self._sweep(now)
        self._count = sum(1 for _ in self._job_ids())
        return removed

    def _expiry_candidates(self, now: float) -> Iterable[str]:
        """Jobs that may have expired by ``now``: every one, unless a backend knows better."""
        return self._job_ids()

    def _expired(self, job_id: str, now: float) -> bool:
        try:
            meta = self._meta(job_id)
            return expired(meta["expires"], meta["state"], now)
        except (OSError, ValueError, KeyError, TypeError):
            return False
