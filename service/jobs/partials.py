"""Scene units' partial sums, kept with their job in the job store under a key per unit.

A unit's partial is written under ``<job>/.units/<index>.npz`` (an object in
an S3-API store, a file in a local one): running a unit again writes the same
key with the same bytes, so a unit run twice (its replica was thought dead)
changes nothing. They go with their job when it is deleted, and are removed
once its outputs are written.
"""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path

import obstore
from obstore.exceptions import BaseError

from service.errors import NotFound, StorageFailed
from service.jobs.objects import reading
from service.jobs.record import is_job_id
from service.jobs.store import JobStore

FOLDER = ".units"


class UnitPartials:
    """Reads and writes units' partial sums where ``store`` keeps its jobs.

    Raises:
        ValueError: a store of another kind (one the replicas cannot share).
    """

    def __init__(self, store: JobStore) -> None:
        from service.jobs.local import LocalJobStore
        from service.jobs.s3 import S3JobStore

        self.objects = store.objects if isinstance(store, S3JobStore) else None
        self.root = Path(store.address) if isinstance(store, LocalJobStore) else None
        if self.objects is None and self.root is None:
            raise ValueError(f"units' partial sums cannot be kept in a {type(store).__name__}")

    @staticmethod
    def _name(job_id: str, unit: int) -> str:
        if not is_job_id(job_id) or unit < 0:
            raise NotFound("no such job")
        return f"{job_id}/{FOLDER}/{unit:06d}.npz"

    def _path(self, job_id: str, unit: int) -> Path:
        assert self.root is not None
        return self.root / job_id[:2] / self._name(job_id, unit)

    def put(self, job_id: str, unit: int, data: bytes) -> None:
        """Store a unit's partial (replacing one written before, whole or not at all)."""
        try:
            if self.objects is not None:
                obstore.put(self.objects, self._name(job_id, unit), data)
                return
            path = self._path(job_id, unit)
            if not path.parent.parent.is_dir():
                raise NotFound("no such job (it may have been deleted)")
            path.parent.mkdir(exist_ok=True)
            part = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
            part.write_bytes(data)
            os.replace(part, path)
        except (BaseError, OSError) as exc:
            raise StorageFailed(f"a unit's partial sums could not be stored: {exc}") from None

    def get(self, job_id: str, unit: int) -> bytes:
        """A unit's partial; NotFound when it was never stored."""
        missing = f"unit {unit} of the job has no partial sums"
        if self.objects is not None:
            with reading(missing):
                return bytes(obstore.get(self.objects, self._name(job_id, unit)).bytes())
        try:
            return self._path(job_id, unit).read_bytes()
        except FileNotFoundError:
            raise NotFound(missing) from None

    def stored(self, job_id: str) -> set[int]:
        """Indices of the units of a job whose partial is stored."""
        prefix = f"{job_id}/{FOLDER}/"
        if self.objects is not None:
            names = [
                m["path"][len(prefix) :]
                for batch in obstore.list(self.objects, prefix=prefix)
                for m in batch
            ]
        else:
            folder = self._path(job_id, 0).parent
            names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
        return {int(n[:-4]) for n in names if n.endswith(".npz") and n[:-4].isdigit()}

    def drop(self, job_id: str) -> None:
        """Remove a job's partials (its outputs are written, or it is over)."""
        if self.objects is not None:
            keys = [
                m["path"]
                for batch in obstore.list(self.objects, prefix=f"{job_id}/{FOLDER}/")
                for m in batch
            ]
            if keys:
                obstore.delete(self.objects, keys)
            return
        shutil.rmtree(self._path(job_id, 0).parent, ignore_errors=True)
