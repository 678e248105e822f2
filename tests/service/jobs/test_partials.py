"""Units' partial sums kept with their job, in a local directory and in a real S3 bucket."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from service.errors import NotFound
from service.jobs.base import BaseJobStore
from service.jobs.local import LocalJobStore
from service.jobs.partials import UnitPartials
from service.jobs.s3 import S3JobStore

MODEL = {"name": "m", "version": "1", "task": "segmentation"}


def _check(store: BaseJobStore) -> None:
    record = store.new_record(MODEL, "raster", None)
    record.state = "queued"
    store.save(record, {"x": np.zeros(2, np.float32)})
    partials = UnitPartials(store)
    partials.put(record.id, 3, b"three")
    partials.put(record.id, 0, b"zero")
    partials.put(record.id, 3, b"three")  # a unit run again writes the same key
    assert partials.get(record.id, 3) == b"three"
    assert partials.stored(record.id) == {0, 3}
    with pytest.raises(NotFound, match="unit 1"):
        partials.get(record.id, 1)
    assert store.load(record.id).layers == record.layers  # the job reads as before
    partials.drop(record.id)
    assert partials.stored(record.id) == set()
    partials.put(record.id, 2, b"two")
    assert store.delete(record.id)
    assert partials.stored(record.id) == set()  # they go with their job


def test_partials_in_a_local_store(tmp_path: Path) -> None:
    _check(LocalJobStore(tmp_path, ttl_s=60))


def test_partials_in_an_s3_bucket(s3_store_url: str, tmp_path: Path) -> None:
    _check(S3JobStore(s3_store_url, tmp_path / "scratch", ttl_s=60))
