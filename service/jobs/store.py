"""The job store: every prediction kept on disk, atomically, until its TTL runs out.

A job is a directory holding ``meta.json`` and one ``.npy`` file per output
array. It is written whole under a temporary name and renamed into place, so a
reader sees either the complete job or none. Several replicas can share the
directory (a shared volume).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import NotFound

log = logging.getLogger(__name__)

_ID = re.compile(r"^[A-Za-z0-9_-]{24}$")
_LAYER = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def owner_of(api_key: str | None) -> str | None:
    """The owner tag stored with a job: a hash, never the key itself."""
    if api_key is None:
        return None
    return hashlib.sha256(api_key.encode()).hexdigest()[:32]


@dataclass
class JobRecord:
    """A stored job's metadata (its arrays live beside it).

    Attributes:
        id: unguessable job id.
        model: ``{"name", "version", "task"}``.
        kind: ``raster`` or ``series``.
        created: epoch seconds.
        expires: epoch seconds.
        layers: one entry per stored array: ``name``, ``role``, ``kind``,
            ``shape``, ``dtype`` and extras such as ``level`` or ``dates``.
        georef: the input's georeference (rasters).
        extra: anything else the response needs later (dates, item ids).
        owner: hash of the API key that made it, or None.
    """

    id: str
    model: dict[str, str]
    kind: str
    created: float
    expires: float
    layers: list[dict[str, Any]] = field(default_factory=list)
    georef: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    owner: str | None = None

    def layer(self, name: str) -> dict[str, Any]:
        """The layer called ``name``."""
        for layer in self.layers:
            if layer["name"] == name:
                return layer
        raise NotFound(f"job has no layer {name!r}; layers: {', '.join(self.layer_names())}")

    def layer_names(self) -> list[str]:
        """Names of the stored layers."""
        return [layer["name"] for layer in self.layers]


class JobStore:
    """Jobs on a filesystem directory.

    Args:
        root: the store's directory (created if missing).
        ttl_s: how long a job is kept.
        fsync: flush files to disk before a job becomes visible.
    """

    def __init__(self, root: Path, ttl_s: float, fsync: bool = True) -> None:
        self.root = root
        self.ttl_s = ttl_s
        self.fsync = fsync
        self._tmp = root / ".tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._count = sum(1 for _ in self._job_dirs())

    @staticmethod
    def new_id() -> str:
        """A fresh unguessable job id (144 random bits)."""
        return secrets.token_urlsafe(18)

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

    def _job_dirs(self) -> list[Path]:
        return [
            p
            for shard in self.root.iterdir()
            if shard.is_dir() and shard.name != ".tmp"
            for p in shard.iterdir()
            if _ID.match(p.name)
        ]

    def save(self, record: JobRecord, arrays: dict[str, np.ndarray]) -> None:
        """Write a job whole, then make it visible in one rename."""
        final = self._dir(record.id)
        staging = self._tmp / f"{record.id}.{secrets.token_hex(4)}"
        staging.mkdir(parents=True)
        try:
            for name, array in arrays.items():
                if not _LAYER.match(name):
                    raise ValueError(f"bad layer name {name!r}")
                self._write(staging / f"{name}.npy", lambda f, a=array: np.save(f, a))
            meta = json.dumps(asdict(record), separators=(",", ":")).encode()
            self._write(staging / "meta.json", lambda f: f.write(meta))
            final.parent.mkdir(exist_ok=True)
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self._count += 1

    def _write(self, path: Path, write: Any) -> None:
        with open(path, "wb") as f:
            write(f)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())

    def load(self, job_id: str, owner: str | None = None) -> JobRecord:
        """The job's record.

        Raises:
            NotFound: no such job, expired, or made with another API key.
        """
        path = self._dir(job_id) / "meta.json"
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError):
            raise NotFound("no such job (it may have expired)") from None
        record = JobRecord(**data)
        if record.expires <= time.time():
            self.delete(job_id)
            raise NotFound("no such job (it may have expired)")
        if record.owner is not None and record.owner != owner:
            raise NotFound("no such job (it may have expired)")
        return record

    def array(self, record: JobRecord, name: str) -> np.ndarray:
        """One stored array of a job, memory-mapped."""
        record.layer(name)
        return np.load(self._dir(record.id) / f"{name}.npy", mmap_mode="r")

    def delete(self, job_id: str) -> bool:
        """Remove a job; True if it existed."""
        path = self._dir(job_id)
        if not path.exists():
            return False
        # Rename first so readers never see a half-deleted job.
        doomed = self._tmp / f"del-{job_id}.{secrets.token_hex(4)}"
        try:
            os.rename(path, doomed)
        except OSError:
            return False
        shutil.rmtree(doomed, ignore_errors=True)
        self._count = max(0, self._count - 1)
        return True

    def cleanup(self) -> int:
        """Delete expired jobs and stale temporary files; returns jobs deleted."""
        now = time.time()
        removed = 0
        for path in self._job_dirs():
            try:
                expires = json.loads((path / "meta.json").read_bytes())["expires"]
            except (OSError, ValueError, KeyError):
                continue
            if expires <= now and self.delete(path.name):
                removed += 1
        for stale in self._tmp.iterdir():
            # Staging directories left by a crash; an hour is far beyond any write.
            if stale.stat().st_mtime < now - 3600:
                shutil.rmtree(stale, ignore_errors=True)
        self._count = sum(1 for _ in self._job_dirs())
        return removed
