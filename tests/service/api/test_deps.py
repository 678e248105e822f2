"""Write-behind across replicas: a job another replica is still writing is waited for."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from service.api.deps import get_job
from service.errors import NotFound
from service.jobs.local import LocalJobStore
from service.jobs.record import JobRecord, id_age_s

MODEL = {"name": "m", "version": "1", "task": "segmentation"}


def test_job_ids_carry_their_creation_time() -> None:
    job_id = LocalJobStore.new_id()
    assert len(job_id) == 24
    age = id_age_s(job_id)
    assert age is not None
    assert 0 <= age < 1
    assert id_age_s("not an id") is None
    # Ids made before carried no time: theirs decode to random times, far from now
    # (one in 2.8e14 milliseconds lands within a given millisecond).
    ages = [id_age_s(secrets.token_urlsafe(18)) for _ in range(1000)]
    assert all(a is not None and abs(a) > 60 for a in ages)


def _replica(root: Path, wait_s: float) -> Any:
    """What get_job reads of a replica's state: its store and its settings."""
    store = LocalJobStore(root, ttl_s=60, write_behind=True)
    return SimpleNamespace(store=store, settings=SimpleNamespace(job_write_behind_wait_s=wait_s))


def _written_late(root: Path, delay_s: float) -> tuple[JobRecord, threading.Event]:
    """A job replica A answered for and writes behind, ``delay_s`` later."""
    writer = LocalJobStore(root, ttl_s=60, write_behind=True)
    real_save = writer.save
    done = threading.Event()

    def slow_save(*args: Any, **kwargs: Any) -> None:
        time.sleep(delay_s)
        real_save(*args, **kwargs)
        done.set()

    writer.save = slow_save  # type: ignore[method-assign]
    record = writer.new_record(MODEL, "raster", None)
    writer.save_soon(record, {"p": np.zeros((2, 2), np.float32)})
    return record, done


def test_another_replica_waits_for_a_job_still_being_written(tmp_path: Path) -> None:
    record, done = _written_late(tmp_path, 0.3)
    other = _replica(tmp_path, wait_s=2.0)
    start = time.monotonic()
    loaded = asyncio.run(get_job(record.id, other, None))
    assert loaded.id == record.id
    assert done.is_set()
    assert time.monotonic() - start < 1.5


def test_without_a_wait_another_replica_answers_404_at_once(tmp_path: Path) -> None:
    record, done = _written_late(tmp_path, 0.3)
    other = _replica(tmp_path, wait_s=0.0)
    with pytest.raises(NotFound):
        asyncio.run(get_job(record.id, other, None))
    done.wait(5)


def test_a_fresh_id_that_never_appears_is_a_404_after_the_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = _replica(tmp_path, wait_s=0.3)
    loads: list[str] = []
    real_load = other.store.load

    def counted_load(job_id: str, *args: Any) -> JobRecord:
        loads.append(job_id)
        return real_load(job_id, *args)

    monkeypatch.setattr(other.store, "load", counted_load)
    start = time.monotonic()
    with pytest.raises(NotFound):
        asyncio.run(get_job(LocalJobStore.new_id(), other, None))
    assert 0.25 <= time.monotonic() - start < 1.0
    # The wait polls with a stat on the event loop, not with loads on worker threads.
    assert len(loads) == 1


def test_an_old_id_is_a_404_at_once(tmp_path: Path) -> None:
    other = _replica(tmp_path, wait_s=2.0)
    start = time.monotonic()
    for job_id in (secrets.token_urlsafe(18), "A" * 24):  # an old-style id; a time long past
        with pytest.raises(NotFound):
            asyncio.run(get_job(job_id, other, None))
    assert time.monotonic() - start < 0.5
