"""Write-behind: jobs held in memory until one background thread has written them."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from service.jobs.record import JobRecord, new_id
from service.jobs.write_behind import Arrays, WriteBehind, read_only


def _record() -> JobRecord:
    model = {"name": "m", "version": "1", "task": "segmentation"}
    return JobRecord(id=new_id(), model=model, kind="raster", created=0.0, expires=1e12)


def test_read_only_views_refuse_writes_and_leave_the_original_alone() -> None:
    array = np.zeros(3)
    view = read_only(array)
    with pytest.raises(ValueError, match="read-only"):
        view[0] = 1
    array[0] = 2
    assert view[0] == 2


def test_a_pending_job_is_served_from_memory_until_written() -> None:
    release = threading.Event()
    written: list[str] = []

    def write(record: JobRecord, arrays: Arrays) -> None:
        release.wait(5)
        record.packed = {name: 64 * i for i, name in enumerate(arrays)}
        written.append(record.id)

    pending = WriteBehind(write)
    record = _record()
    pending.submit(record, {"p": np.arange(3.0)})
    assert record.id in pending
    held = pending.record(record.id)
    assert held is not None
    assert held is not record
    assert held.id == record.id
    array = pending.array(record.id, "p")
    assert array is not None
    assert not array.flags.writeable
    assert pending.array(record.id, "other") is None
    release.set()
    pending.settle(record.id)
    assert record.id not in pending
    assert pending.record(record.id) is None
    assert written == [record.id]
    assert record.packed == {"p": 0}  # the caller's record learns where the arrays went
    pending.flush()


def test_a_failed_write_is_logged_and_the_job_disappears(caplog: pytest.LogCaptureFixture) -> None:
    def write(record: JobRecord, arrays: Arrays) -> None:
        raise OSError("disk full")

    pending = WriteBehind(write)
    record = _record()
    pending.submit(record, {})
    pending.flush()
    assert record.id not in pending
    assert "could not be written" in caplog.text


def test_flush_waits_for_every_pending_job() -> None:
    written: list[str] = []
    pending = WriteBehind(lambda record, arrays: written.append(record.id))
    records = [_record() for _ in range(5)]
    for record in records:
        pending.submit(record, {})
    pending.flush()
    assert written == [r.id for r in records]
