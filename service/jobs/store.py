"""The job store: every prediction kept on disk, atomically, until its TTL runs out.

A job is a directory holding ``meta.json`` and its output arrays, packed one
after another in ``arrays.npk`` (each a complete ``.npy`` image starting at a
64-byte boundary; ``meta.json`` records the offsets). One file instead of one
per array saves a file creation and an fsync per array on every synchronous
request (creating a file took about 0.35 ms on the ext4 volume measured).
Jobs written as one ``<name>.npy`` per array (earlier versions) are still read.
It is written whole under a temporary name and renamed into place, so a
reader sees either the complete job or none. Several replicas can share the
directory (a shared volume).

Jobs are kept until their TTL runs out, or until the volume needs the room: with
``min_free_bytes`` or ``max_bytes`` set, the oldest finished jobs are deleted
before their TTL whenever a new job would leave less free space than the one or
make this process's jobs take more than the other. A footprints request of a
512 px tile stores 2.4 MB, so at 10 requests/s a 24-hour TTL alone would ask for
2 TB.

With write-behind on, a synchronous prediction's job is answered from memory in
this process while one background thread writes it: the request no longer waits
for the disk, but other replicas see the job only once it is written (job ids
carry their creation time, so they can tell such a job from a missing one and
wait for it), and a crash before then loses it.
"""

from __future__ import annotations

import collections
import copy
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import NotFound, StorageFailed
from service.jobs.record import (
    _ID,
    FINAL_STATES,
    STATES,
    JobRecord,
    id_age_s,
    is_job_id,
    new_id,
    owner_of,
)

__all__ = [
    "FINAL_STATES",
    "GONE",
    "STATES",
    "JobRecord",
    "JobStore",
    "free_bytes",
    "id_age_s",
    "is_job_id",
    "owner_of",
    "read_only",
]

log = logging.getLogger(__name__)

_LAYER = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
PACK = "arrays.npk"
GONE = "no such job (it was deleted while being read)"
_ALIGN = 64
# Data goes to disk in slices of this size. On the ext4 volumes measured
# (Linux 6.18), once the page cache held a few GB of written files (as it does
# on a server whose job store has been filling), one write() of 128 KiB or more
# into a new file cost about ten times as much kernel time as the same bytes in
# 64 KiB writes (4 MB: 10-11 ms against 0.9-1.0 ms). With a fresh page cache
# both took about 1 ms.
_WRITE_CHUNK = 64 * 1024


def _pack(f: Any, arrays: dict[str, np.ndarray]) -> dict[str, int]:
    """Write arrays one after another as ``.npy`` images; returns their offsets."""
    offsets: dict[str, int] = {}
    at = 0
    for name, array in arrays.items():
        pad = -at % _ALIGN
        if pad:
            at += f.write(b"\0" * pad)
        offsets[name] = at
        if array.dtype.hasobject:
            raise ValueError(f"array {name!r} holds Python objects and cannot be stored")
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        header = np.lib.format.header_data_from_array_1_0(array)
        np.lib.format.write_array_header_1_0(f, header)
        _write_chunked(f, array.reshape(-1).view(np.uint8))
        at = f.tell()
    return offsets


def _write_chunked(f: Any, data: bytes | np.ndarray) -> None:
    """Write ``data`` to ``f`` in slices of ``_WRITE_CHUNK`` bytes (see there)."""
    view = memoryview(data).cast("B") if not isinstance(data, np.ndarray) else data
    for start in range(0, len(view), _WRITE_CHUNK):
        f.write(view[start : start + _WRITE_CHUNK])


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _read_packed(path: Path, offset: int) -> np.ndarray:
    """The array whose ``.npy`` image starts at ``offset`` in a pack, memory-mapped."""
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


def read_only(array: np.ndarray) -> np.ndarray:
    """A view of ``array`` that refuses writes (arrays handed out from memory)."""
    view = array.view()
    view.flags.writeable = False
    return view


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged process may still write on ``path``'s filesystem."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


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


class JobStore:
    """Jobs on a filesystem directory.

    Args:
        root: the store's directory (created if missing).
        ttl_s: how long a job is kept.
        fsync: flush files to disk before a job becomes visible.
        write_behind: :meth:`save_soon` writes in the background (see the module).
        min_free_bytes: delete the oldest finished jobs before their TTL rather
            than leave less free space than this on the volume (0: never).
        max_bytes: delete the oldest finished jobs before their TTL rather than
            let the jobs this process knows of take more than this (0: no cap).
            For volumes whose limit the filesystem does not show (a Kubernetes
            ``emptyDir`` with a ``sizeLimit``).
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
        self.root = root
        self.ttl_s = ttl_s
        self.fsync = fsync
        self.write_behind = write_behind
        self.min_free_bytes = min_free_bytes
        self.max_bytes = max_bytes
        # Jobs this process wrote or found at start, oldest first: id -> bytes.
        self._sizes: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._bytes = 0
        self._room_lock = threading.Lock()
        self.evicted = 0  # jobs deleted before their TTL to make room
        self._on_evict = on_evict
        # Jobs accepted by save_soon and not yet on disk: record, arrays, write.
        self._pending: dict[str, tuple[JobRecord, dict[str, np.ndarray], Future[None]]] = {}
        self._pending_lock = threading.Lock()
        self._writer: ThreadPoolExecutor | None = None
        self._tmp = root / ".tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        found = self._job_dirs() if scan else []
        self._count = len(found)
        if min_free_bytes or max_bytes:
            # Sizes matter only to the byte cap; free space comes from the volume.
            for path in sorted(found, key=_mtime):
                self._track(path.name, _dir_bytes(path) if max_bytes else 0)

    @staticmethod
    def new_id() -> str:
        """A fresh unguessable job id (see :func:`service.jobs.record.new_id`)."""
        return new_id()

    def new_record(
        self, model: dict[str, str], kind: str, owner: str | None, job_id: str | None = None
    ) -> JobRecord:
        """A record for a job created now, expiring after the TTL."""
        now = time.time()
        return JobRecord(
            id=job_id or self.new_id(),
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

    def _dir(self, job_id: str) -> Path:
        if not _ID.match(job_id):
            raise NotFound("no such job")
        return self.root / job_id[:2] / job_id

    def exists(self, job_id: str) -> bool:
        """Whether a job is on disk or being written behind here (one stat; no owner check)."""
        return job_id in self._pending or (self._dir(job_id) / "meta.json").exists()

    def _job_dirs(self) -> list[Path]:
        return [
            p
            for shard in self.root.iterdir()
            if shard.is_dir() and shard.name != ".tmp"
            for p in shard.iterdir()
            if _ID.match(p.name)
        ]

    def save(
        self,
        record: JobRecord,
        arrays: dict[str, np.ndarray],
        files: dict[str, bytes] | None = None,
        check: Callable[[list[Path]], None] | None = None,
    ) -> None:
        """Write a job whole, then make it visible in one rename.

        Args:
            record: the job's metadata.
            arrays: layers stored as ``.npy``.
            files: other files to keep with the job (e.g. a scene's input).
            check: called with the staged files' paths before the job becomes
                visible; an exception leaves no trace of the job.
        """
        final = self._dir(record.id)
        size = sum(a.nbytes for a in arrays.values()) + sum(map(len, (files or {}).values()))
        staging = self._tmp / f"{record.id}.{secrets.token_hex(4)}"
        try:
            # Parents too: the store's folder may have been removed under a running
            # server. Before make_room, whose statvfs needs the folder.
            staging.mkdir(parents=True)
            self.make_room(size)
            for name in arrays:
                if not _LAYER.match(name):
                    raise ValueError(f"bad layer name {name!r}")
            if arrays:
                record.packed = self._write(staging / PACK, lambda f: _pack(f, arrays))
            for name, data in (files or {}).items():
                if not _LAYER.match(name):
                    raise ValueError(f"bad file name {name!r}")
                self._write(staging / name, lambda f, d=data: _write_chunked(f, d))
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
        if self.min_free_bytes or self.max_bytes:
            # The data plus about what headers and meta.json add (no stat calls).
            self._track(record.id, size + 1024 * (len(arrays) + 1))

    def _track(self, job_id: str, size: int) -> None:
        with self._room_lock:
            self._bytes += size - self._sizes.pop(job_id, 0)
            self._sizes[job_id] = size

    def _untrack(self, job_id: str) -> None:
        with self._room_lock:
            self._bytes -= self._sizes.pop(job_id, 0)

    def _short_of_room(self, size: int) -> bool:
        if self.max_bytes and self._bytes + size > self.max_bytes:
            return True
        return bool(self.min_free_bytes) and free_bytes(self.root) - size < self.min_free_bytes

    def make_room(self, size: int) -> int:
        """Delete the oldest finished jobs until ``size`` more bytes fit; returns how many.

        Jobs still queued or running, and jobs being written behind, are kept.
        When nothing more can go the write goes ahead and may fail (storage_failed).
        """
        if not (self.min_free_bytes or self.max_bytes) or not self._short_of_room(size):
            return 0
        evicted = 0
        with self._room_lock:
            candidates = list(self._sizes.items())
        for job_id, _ in candidates:
            if not self._short_of_room(size):
                break
            if job_id in self._pending or not self._finished_on_disk(job_id):
                continue
            if self.delete(job_id):
                evicted += 1
        if evicted:
            self.evicted += evicted
            if self._on_evict is not None:
                self._on_evict(evicted)
            log.warning(
                "job store short of room: deleted the %d oldest finished jobs before their TTL",
                evicted,
            )
        return evicted

    def _finished_on_disk(self, job_id: str) -> bool:
        try:
            state = json.loads((self._dir(job_id) / "meta.json").read_bytes()).get("state")
        except (OSError, ValueError, AttributeError):
            self._untrack(job_id)  # gone (another replica deleted it) or unreadable
            return False
        return state in FINAL_STATES

    def save_soon(self, record: JobRecord, arrays: dict[str, np.ndarray]) -> None:
        """Save a job: in the background with write-behind on, else now (as :meth:`save`).

        A failed background write is logged; the job then disappears.
        """
        if not self.write_behind:
            self.save(record, arrays)
            return
        snapshot = copy.deepcopy(record)
        with self._pending_lock:
            if self._writer is None:
                self._writer = ThreadPoolExecutor(1, thread_name_prefix="job-writer")
            future: Future[None] = Future()
            self._pending[record.id] = (snapshot, arrays, future)
            self._writer.submit(self._write_pending, record)

    def _write_pending(self, caller: JobRecord) -> None:
        job_id = caller.id
        record, arrays, future = self._pending[job_id]
        try:
            self.save(record, arrays)
            # Where the arrays went in the pack, also on the caller's record: it may
            # still be reading the job (a GeoTIFF answer) once the job leaves memory.
            caller.packed = record.packed
        except BaseException as exc:
            log.error("job %s could not be written: %s", job_id[:6], exc)
        finally:
            # Dropped only once on disk (or failed), so readers always find it somewhere.
            with self._pending_lock:
                self._pending.pop(job_id, None)
            future.set_result(None)

    def _settle(self, job_id: str) -> None:
        """Wait until a job being written behind is on disk (before touching its files)."""
        pending = self._pending.get(job_id)
        if pending is not None:
            pending[2].result()

    def settle(self, job_id: str) -> None:
        """Wait until a job written behind is on disk, for a reader in another process."""
        self._settle(job_id)

    def flush(self) -> None:
        """Wait for every job being written behind (on shutdown)."""
        with self._pending_lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.shutdown(wait=True)

    def update(self, record: JobRecord) -> None:
        """Replace a job's record atomically (state, progress, layers)."""
        self._settle(record.id)
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
        if record.finished and self.max_bytes:
            self._track(record.id, _dir_bytes(directory))  # a scene's outputs are in now

    def file(self, record: JobRecord, name: str) -> Path:
        """Path of a file kept in a job's directory (outputs, the scene input)."""
        if not _LAYER.match(name) or name.startswith("."):
            raise NotFound(f"job has no file {name!r}")
        self._settle(record.id)
        return self._dir(record.id) / name

    def pin(self, record: JobRecord, name: str) -> tuple[Path, bool]:
        """A private hard link to a job's file, for a download that must outlive a delete.

        The link keeps the file's data while a response streams it, even if the
        job is deleted (TTL, DELETE, making room) before the response opens it.

        Returns:
            ``(path, pinned)``: the link, which the caller unlinks when done
            (:meth:`cleanup` removes any a crash left), or, where the filesystem
            has no hard links, the file's own path and False.

        Raises:
            NotFound: the job (or the file) is gone.
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

    def unfinished(self) -> list[JobRecord]:
        """Jobs left queued or running (e.g. by a stopped server), oldest first."""
        found = []
        for path in self._job_dirs():
            try:
                record = JobRecord(**json.loads((path / "meta.json").read_bytes()))
            except (OSError, ValueError, TypeError):
                continue
            if not record.finished:
                found.append(record)
        return sorted(found, key=lambda r: r.created)

    def _write(self, path: Path, write: Callable[..., Any]) -> Any:
        """Create ``path``, fill it with ``write(file)`` and return what that returned."""
        with open(path, "wb") as f:
            result = write(f)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        return result

    def load(self, job_id: str, owner: str | None = None, any_owner: bool = False) -> JobRecord:
        """The job's record.

        Raises:
            NotFound: no such job, expired, or made with another API key.
        """
        path = self._dir(job_id) / "meta.json"
        pending = self._pending.get(job_id)
        if pending is not None:
            record = copy.deepcopy(pending[0])
        else:
            try:
                data = json.loads(path.read_bytes())
            except (OSError, ValueError):
                raise NotFound(
                    "no such job (it may have expired, or been deleted early to make room)"
                ) from None
            record = JobRecord(**data)
        if record.expires <= time.time() and record.finished:
            self.delete(job_id)
            raise NotFound("no such job (it may have expired)")
        if record.owner is not None and record.owner != owner and not any_owner:
            raise NotFound("no such job (it may have expired)")
        return record

    def array(self, record: JobRecord, name: str) -> np.ndarray:
        """One stored array of a job, memory-mapped (read-only)."""
        record.layer(name)
        pending = self._pending.get(record.id)
        if pending is not None and name in pending[1]:
            return read_only(pending[1][name])
        try:
            if name in record.packed:
                return _read_packed(self._dir(record.id) / PACK, record.packed[name])
            return np.load(self._dir(record.id) / f"{name}.npy", mmap_mode="r")
        except FileNotFoundError:
            # Deleted (TTL, DELETE, or to make room) after its record was read.
            raise NotFound(GONE) from None

    def delete(self, job_id: str) -> bool:
        """Remove a job; True if it existed."""
        path = self._dir(job_id)
        self._settle(job_id)
        if not path.exists():
            self._untrack(job_id)
            return False
        # Rename first so readers never see a half-deleted job.
        doomed = self._tmp / f"del-{job_id}.{secrets.token_hex(4)}"
        try:
            os.rename(path, doomed)
        except OSError:
            return False
        shutil.rmtree(doomed, ignore_errors=True)
        self._count = max(0, self._count - 1)
        self._untrack(job_id)
        return True

    def cleanup(self) -> int:
        """Delete expired jobs and stale temporary files; returns jobs deleted."""
        now = time.time()
        removed = 0
        for path in self._job_dirs():
            try:
                meta = json.loads((path / "meta.json").read_bytes())
                expires, state = meta["expires"], meta.get("state", "done")
            except (OSError, ValueError, KeyError):
                continue
            # Unfinished jobs belong to a job runner; they expire once finished.
            if state in FINAL_STATES and expires <= now and self.delete(path.name):
                removed += 1
        for stale in self._tmp.iterdir():
            # Staging directories and download pins left by a crash; an hour is far
            # beyond any write. A pin's ctime is when it was linked.
            try:
                info = stale.lstat()
            except FileNotFoundError:
                continue
            if max(info.st_mtime, info.st_ctime) >= now - 3600:
                continue
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        self._count = sum(1 for _ in self._job_dirs())
        return removed
