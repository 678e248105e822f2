"""One replica's worker on a real redis-server and a job directory: entries of odd jobs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np

from service.jobs.local import LocalJobStore
from service.jobs.queue import RedisQueue
from service.pipeline.scene import SceneRunner
from service.pipeline.unit_worker import QueueLimits, UnitWorker, units_of
from tests.helpers.redis_server import RedisServer

MODEL = {"name": "footprints", "version": "2.0.0", "task": "segmentation"}


def _never(ref: str) -> Any:
    raise AssertionError(f"no model is run here ({ref})")


def test_units_of_reads_the_plan_from_the_record(tmp_path: Path) -> None:
    store = LocalJobStore(tmp_path, ttl_s=60)
    record = store.new_record(MODEL, "raster", None)
    record.params = {"units": [[0, 2], [2, 4], [4, 5]]}
    units = units_of(record)
    assert [(u.index, u.first, u.stop) for u in units] == [(0, 0, 2), (1, 2, 4), (2, 4, 5)]


def test_entries_of_gone_or_crash_looping_jobs_are_dealt_with(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    store = LocalJobStore(tmp_path, ttl_s=60)
    looping = store.new_record(MODEL, "raster", "owner")
    looping.state = "queued"
    looping.params = {"model": "footprints", "inputs": [], "units": [[0, 1]]}
    store.save(looping, {"x": np.zeros(1, np.float32)})
    gone = "g" * 22

    async def main() -> None:
        queue = RedisQueue(redis_server.url, "w", claim_after_s=1, prefix="t:")
        await queue.ping()
        await queue.seed(gone, "k", [0], 1, urgent=True, max_units=0)
        await queue.seed(looping.id, "owner", [0], 1, urgent=True, max_units=0)
        # Its unit's replica died twice already (JOB_MAX_RESUMES=1): this run is one too many.
        for _ in range(2):
            await queue.attempt(looping.id, 0)
        worker = UnitWorker(
            store, SceneRunner(store, 10.0), _never, queue, QueueLimits(max_resumes=1)
        )
        task = asyncio.create_task(worker.run())
        deadline = asyncio.get_running_loop().time() + 30
        while await queue.queued():
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.1)
        worker.stopping = True
        await task
        await queue.close()

    asyncio.run(main())
    failed = store.load(looping.id, any_owner=True)
    assert failed.state == "failed"
    assert failed.error is not None
    assert failed.error["code"] == "interrupted"
    assert "started 2 times" in failed.error["message"]
