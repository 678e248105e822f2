"""Write-behind: jobs answered from memory while one background thread writes them."""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from service.jobs.record import JobRecord

log = logging.getLogger(__name__)

Arrays = dict[str, np.ndarray]


def read_only(array: np.ndarray) -> np.ndarray:
    """A view of ``array`` that refuses writes (arrays handed out from memory)."""
    view = array.view()
    view.flags.writeable = False
    return view


class WriteBehind:
    """Jobs accepted and not yet written, and the one thread that writes them.

    Other replicas see such a job only once it is written (job ids carry their
    creation time, so they can tell it from a missing one and wait), and a crash
    before then loses it.

    Args:
        write: stores a job for good; a failure is logged and the job disappears.
    """

    def __init__(self, write: Callable[[JobRecord, Arrays], None]) -> None:
        self._write = write
        self._pending: dict[str, tuple[JobRecord, Arrays, Future[None]]] = {}
        self._lock = threading.Lock()
        self._writer: ThreadPoolExecutor | None = None

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._pending

    def submit(self, record: JobRecord, arrays: Arrays) -> None:
        """Hold a job in memory and queue its write."""
        snapshot = copy.deepcopy(record)
        with self._lock:
            if self._writer is None:
                self._writer = ThreadPoolExecutor(1, thread_name_prefix="job-writer")
            future: Future[None] = Future()
            self._pending[record.id] = (snapshot, arrays, future)
            self._writer.submit(self._write_pending, record)

    def _write_pending(self, caller: JobRecord) -> None:
        job_id = caller.id
        record, arrays, future = self._pending[job_id]
        try:
            self._write(record, arrays)
            # Where the arrays went, also on the caller's record: it may still be
            # reading the job (a GeoTIFF answer) once the job leaves memory.
            caller.packed = record.packed
        except BaseException as exc:
            log.error("job %s could not be written: %s", job_id[:6], exc)
        finally:
            # Dropped only once written (or failed), so readers always find it somewhere.
            with self._lock:
                self._pending.pop(job_id, None)
            future.set_result(None)

    def record(self, job_id: str) -> JobRecord | None:
        """A copy of a pending job's record, or None."""
        pending = self._pending.get(job_id)
        return copy.deepcopy(pending[0]) if pending is not None else None

    def array(self, job_id: str, name: str) -> np.ndarray | None:
        """A pending job's array, read-only, or None."""
        pending = self._pending.get(job_id)
        if pending is None or name not in pending[1]:
            return None
        return read_only(pending[1][name])

    def settle(self, job_id: str) -> None:
        """Wait until a pending job is written (or failed)."""
        pending = self._pending.get(job_id)
        if pending is not None:
            pending[2].result()

    def flush(self) -> None:
        """Wait for every pending job (on shutdown)."""
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.shutdown(wait=True)
