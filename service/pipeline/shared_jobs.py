"""Scene jobs shared by every replica through the Redis work queue (``ATTNSERVE_QUEUE_URL``).

A job is planned once, by the replica that accepts it: its task's tile grid
is cut into units of tiles (:mod:`service.pipeline.units`), written
into the job's record, and queued (:mod:`service.jobs.queue`). Any replica
takes the next unit, runs its tiles through its own batcher and stores the
unit's partial sums in the job store (:mod:`service.jobs.partials`); only then
is the unit acknowledged. The replica whose unit completes the job's set
queues its finishing step, which one replica takes: it blends the partials
into the job's COGs and marks the job done. A replica killed mid-unit (or
mid-finishing) leaves its entry pending; another claims it after
``ATTNSERVE_QUEUE_CLAIM_AFTER_S`` and runs it again, writing the same partial.

Jobs are never resumed from the store at start, only from Redis: a job Redis
does not know (it restarted empty) is queued again from its record, without
the units whose partials are stored, by whichever replica looks first.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service.errors import AttnserveError, Conflict
from service.jobs.partials import UnitPartials
from service.jobs.queue import QueueUnavailable, RedisQueue
from service.jobs.record import JobRecord
from service.jobs.store import JobStore
from service.metrics import Metrics
from service.pipeline.scene import SceneRunner
from service.pipeline.unit_worker import ANONYMOUS, QueueLimits, UnitWorker, no_progress
from service.pipeline.units import GridPlanned, PlanPass, Unit, plan_units
from service.runtime.repository import ServedModel

log = logging.getLogger(__name__)

# How often Redis is checked (and the queue's gauge set).
WATCH_S = 2.0
# A job younger than this without units is being planned by the replica that took it.
PLAN_GRACE_S = 60.0


def replica_name() -> str:
    """This replica's consumer name: its host (a pod's name) and process id."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(eq=False)
class SharedJobs:
    """Runs scene jobs' units taken from the shared queue, ``slots`` at a time.

    The same face as :class:`service.pipeline.jobs.JobManager` to the job service.
    """

    store: JobStore
    runner: SceneRunner
    resolve: Callable[[str], ServedModel]
    queue: RedisQueue
    limits: QueueLimits = field(default_factory=QueueLimits)
    slots: int = 1
    metrics: Metrics | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, init=False)
    _workers: list[UnitWorker] = field(default_factory=list, init=False)
    _stopping: bool = field(default=False, init=False)
    _problem: str | None = field(default="the shared work queue was not reached yet", init=False)
    _reached: bool = field(default=False, init=False)
    _epoch: str | None = field(default=None, init=False)
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False)
    _waiting: int = field(default=0, init=False)

    @property
    def partials(self) -> UnitPartials:
        """Where units' partial sums are kept."""
        return UnitPartials(self.store)

    @property
    def queued(self) -> int:
        """Units waiting in the shared queue (as last seen)."""
        return self._waiting

    def problem(self) -> str | None:
        """Why this replica is not ready for scene jobs: Redis never reached; None once it was."""
        return None if self._reached else self._problem

    def status(self) -> dict[str, Any]:
        """The queue as readiness shows it."""
        return {"shared": True, "reachable": self._problem is None, "problem": self._problem}

    async def start(self) -> None:
        """Start taking units; Redis is watched (and jobs it lost queued again when it returns)."""
        self._loop = asyncio.get_running_loop()
        self._workers = [
            UnitWorker(self.store, self.runner, self.resolve, self.queue, self.limits, self.metrics)
            for _ in range(self.slots)
        ]
        # Units of one job run by several slots download its input once.
        for worker in self._workers[1:]:
            worker.inputs = self._workers[0].inputs
        self._tasks = [asyncio.create_task(self._watch(), name="queue-watch")]
        self._tasks += [
            asyncio.create_task(w.run(), name=f"queue-slot-{i}")
            for i, w in enumerate(self._workers)
        ]

    async def stop(self, grace_s: float) -> None:
        """Stop taking units; units running after ``grace_s`` are handed back to the queue."""
        self._stopping = True
        for worker in self._workers:
            worker.stopping = True
        deadline = time.monotonic() + grace_s
        while any(w.in_flight for w in self._workers) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.queue.close()

    # Accepting jobs.

    async def enqueue(self, record: JobRecord) -> None:
        """Plan a stored job into units and queue them.

        Raises:
            TooManyRequests: the job's API key has all the jobs it may (429).
            Overloaded: the queue holds all the units it may, or Redis is away (503).
        """
        served = self.resolve(record.params["model"])
        owner = record.owner or ANONYMOUS
        await self.queue.admit(record.id, owner, self.limits.max_jobs_per_key)
        try:
            units = await self._plan(record, served)
            await asyncio.to_thread(self.store.update, record)
            urgent = len(units) <= self.limits.small_units
            indices = [u.index for u in units]
            await self.queue.seed(
                record.id, owner, indices, len(units), urgent, self.limits.max_units
            )
        except BaseException:
            with contextlib.suppress(QueueUnavailable):
                await self.queue.release(record.id, owner)
            raise

    async def _plan(self, record: JobRecord, served: ServedModel) -> list[Unit]:
        """Cut the job's grid into units, noted in its record (not yet stored)."""
        try:
            await self.runner.run(record, served, no_progress, lambda: False, PlanPass())
        except GridPlanned as planned:
            units = plan_units(planned.grid, self.limits.unit_tiles)
            record.params["units"] = [u.to_json() for u in units]
            record.progress = {"done": 0, "total": len(units), "fraction": 0.0, "of": "units"}
            return units
        raise RuntimeError("the model's task ran a scene without planning it")

    def cancel(self, record: JobRecord) -> JobRecord:
        """Cancel a queued or running job on every replica (called from a worker thread)."""
        if record.finished:
            raise Conflict(f"job is already {record.state}")
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(
            self.queue.stop(record.id, "cancelled"), self._loop
        ).result(30)
        record.state = "cancelled"
        record.error = {"code": "cancelled", "message": "cancelled by the client"}
        self.store.update(record)
        self.partials.drop(record.id)
        asyncio.run_coroutine_threadsafe(
            self.queue.release(record.id, record.owner or ANONYMOUS), self._loop
        ).result(30)
        return record

    async def live(self, record: JobRecord) -> dict[str, Any]:
        """What the queue adds to a job's answer: progress, ETA and workers across replicas."""
        if record.finished:
            workers = record.params.get("workers")
            return {"workers": workers} if workers is not None else {}
        try:
            progress = await self.queue.progress(record.id)
        except QueueUnavailable:
            return {}
        if progress is None:
            return {}
        total, done = progress.total, progress.done
        body: dict[str, Any] = {
            "progress": {
                "done": done,
                "total": total,
                "fraction": round(done / total, 4) if total else 0.0,
                "of": "units",
            },
            "workers": progress.workers,
        }
        if progress.started is not None:
            body["state"] = "running"
            if done:
                pace = (time.time() - progress.started) / done
                body["eta_s"] = round(pace * (total - done), 1)
        return body

    # Working.

    async def _watch(self) -> None:
        """Check Redis; when it is reached again, queue what it lost; keep the gauges."""
        while not self._stopping:
            try:
                await self.queue.ping()
                epoch = await self.queue.epoch()
                self._problem = None
                self._reached = True
                # Redis is new to this replica, or came back empty: what it lost is queued
                # again (a restart too quick for a ping to miss Redis still shows here).
                if epoch != self._epoch and await self._requeue_lost():
                    self._epoch = epoch
                self._waiting = await self.queue.waiting()
                if self.metrics is not None:
                    self.metrics.queue_units.set(self._waiting)
            except QueueUnavailable as exc:
                if self._problem is None:
                    log.error("the shared work queue cannot be reached: %s", exc.detail)
                self._problem = (
                    f"the shared work queue (Redis) cannot be reached: {exc.detail.get('reason')}"
                )
            except Exception:
                log.exception("the shared work queue's watch failed")
            await asyncio.sleep(WATCH_S)

    async def _requeue_lost(self) -> bool:
        """Queue again the unfinished jobs Redis does not know, less their stored units.

        False when the store could not be listed (tried again on the next look).
        """
        try:
            records = await asyncio.to_thread(self.store.unfinished)
        except OSError as exc:
            log.error("unfinished jobs could not be listed: %s", exc)
            return False
        for record in records:
            if await self.queue.known(record.id):
                continue
            if "units" not in record.params:
                # Queued before this replica had a shared queue (or by one that died
                # while planning it, long enough ago): planned here.
                if time.time() - record.created < PLAN_GRACE_S:
                    continue
                try:
                    await self._plan(record, self.resolve(record.params["model"]))
                    await asyncio.to_thread(self.store.update, record)
                except AttnserveError as exc:
                    log.error("job %s could not be planned: %s", record.id[:6], exc.message)
                    continue
            total = len(record.params["units"])
            stored = await asyncio.to_thread(self.partials.stored, record.id)
            left = [i for i in range(total) if i not in stored]
            owner = record.owner or ANONYMOUS
            urgent = total <= self.limits.small_units
            with contextlib.suppress(AttnserveError):
                await self.queue.admit(record.id, owner, 2**31)
            if await self.queue.seed(record.id, owner, left, total, urgent, 0):
                log.info(
                    "job %s queued again: %d of %d units left", record.id[:6], len(left), total
                )
        return True


__all__ = ["QueueLimits", "SharedJobs", "replica_name"]
