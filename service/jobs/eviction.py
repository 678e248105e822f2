"""Eviction: when a job expires, and which finished jobs go early when room runs short."""

from __future__ import annotations

import collections
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from service.jobs.record import FINAL_STATES

log = logging.getLogger(__name__)


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged process may still write on ``path``'s filesystem."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def expired(expires: float, state: str, now: float) -> bool:
    """Whether a job is past its TTL; unfinished jobs belong to a runner and never expire."""
    return state in FINAL_STATES and expires <= now


class Room:
    """Keeps a volume's jobs within a free-space floor and a byte cap, oldest finished first.

    Args:
        root: a path on the volume whose free space counts.
        min_free_bytes: delete jobs rather than leave less free space than this (0: never).
        max_bytes: delete jobs rather than let the tracked jobs take more than this
            (0: no cap). For volumes whose limit the filesystem does not show (a
            Kubernetes ``emptyDir`` with a ``sizeLimit``).
        on_evict: called with the number of jobs deleted to make room (metrics).
    """

    def __init__(
        self,
        root: Path,
        min_free_bytes: int = 0,
        max_bytes: int = 0,
        on_evict: Callable[[int], None] | None = None,
    ) -> None:
        self.root = root
        self.min_free_bytes = min_free_bytes
        self.max_bytes = max_bytes
        self.evicted = 0
        self._on_evict = on_evict
        # Jobs known to this process, oldest first: id -> bytes.
        self._sizes: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """Whether any limit is set (otherwise jobs go only at their TTL)."""
        return bool(self.min_free_bytes or self.max_bytes)

    @property
    def tracked_bytes(self) -> int:
        """Bytes of the jobs this process knows of."""
        return self._bytes

    def track(self, job_id: str, size: int) -> None:
        """Count a job (again) as the newest, ``size`` bytes."""
        with self._lock:
            self._bytes += size - self._sizes.pop(job_id, 0)
            self._sizes[job_id] = size

    def untrack(self, job_id: str) -> None:
        """Forget a job (deleted, or gone elsewhere)."""
        with self._lock:
            self._bytes -= self._sizes.pop(job_id, 0)

    def short_of(self, size: int) -> bool:
        """Whether ``size`` more bytes would pass the cap or the floor."""
        if self.max_bytes and self._bytes + size > self.max_bytes:
            return True
        return bool(self.min_free_bytes) and free_bytes(self.root) - size < self.min_free_bytes

    def make_room(
        self, size: int, evictable: Callable[[str], bool], delete: Callable[[str], bool]
    ) -> int:
        """Delete the oldest evictable jobs until ``size`` more bytes fit; returns how many.

        When nothing more can go the write goes ahead and may fail (storage_failed).
        """
        if not self.enabled or not self.short_of(size):
            return 0
        evicted = 0
        with self._lock:
            candidates = list(self._sizes)
        for job_id in candidates:
            if not self.short_of(size):
                break
            if evictable(job_id) and delete(job_id):
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
