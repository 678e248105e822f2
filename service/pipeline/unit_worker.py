"""One replica's work from the shared queue: units of scene jobs and their finishing steps.

Each entry is run, then acknowledged; a unit's partial sums are stored before
that (see :mod:`service.pipeline.shared_jobs` for the whole picture). While an
entry runs, its idle time in Redis is reset every third of the claim timeout,
so only a replica that stopped answering loses its work to another. A job
cancelled or failed on any replica stops here within half a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from service.errors import AttnserveError, NotFound
from service.jobs.partials import UnitPartials
from service.jobs.queue import FINISH, Delivery, QueueUnavailable, RedisQueue
from service.jobs.record import JobRecord
from service.jobs.store import JobStore
from service.metrics import Metrics
from service.pipeline.scene import SceneRunner
from service.pipeline.scene_grid import JobCancelled
from service.pipeline.units import (
    FinishPass,
    PartialSums,
    ScenePart,
    Unit,
    UnitPass,
    UnitStored,
)
from service.runtime.repository import ServedModel

log = logging.getLogger(__name__)

# How often a running unit looks whether its job was stopped.
POLL_S = 0.5
ANONYMOUS = "anonymous"


def units_of(record: JobRecord) -> list[Unit]:
    """The units a job was planned into (stored in its record)."""
    return [Unit.from_json(i, data) for i, data in enumerate(record.params["units"])]


def no_progress(done: int, total: int) -> None:
    """Progress of a unit's tiles is not reported: the queue counts units."""


@dataclass
class QueueLimits:
    """How jobs are cut into units and how much may wait.

    Attributes:
        unit_tiles: tiles per unit (whole tile rows, or part of a wider row).
        small_units: jobs of at most this many units go before larger ones.
        max_jobs_per_key: scene jobs one API key may have queued or running.
        max_units: units the queue may hold, all jobs together (0: no cap).
        max_resumes: runs of a unit cut short (its replica died) before its job fails.
    """

    unit_tiles: int = 16
    small_units: int = 8
    max_jobs_per_key: int = 10
    max_units: int = 100_000
    max_resumes: int = 2


@dataclass(eq=False)
class UnitWorker:
    """Runs entries taken from the shared queue one at a time; a replica has ``slots`` of these."""

    store: JobStore
    runner: SceneRunner
    resolve: Callable[[str], ServedModel]
    queue: RedisQueue
    limits: QueueLimits
    metrics: Metrics | None = None
    stopping: bool = field(default=False, init=False)
    in_flight: int = field(default=0, init=False)
    inputs: dict[str, asyncio.Lock] = field(default_factory=dict, init=False)

    @property
    def partials(self) -> UnitPartials:
        """Where units' partial sums are kept."""
        return UnitPartials(self.store)

    async def run(self) -> None:
        """Take entries and work them until stopped."""
        while not self.stopping:
            try:
                delivery = await self.queue.take(block_ms=1000)
            except QueueUnavailable:
                await asyncio.sleep(1.0)
                continue
            if delivery is None:
                continue
            if delivery.claimed:
                log.warning(
                    "took over unit %s of job %s from a replica that went quiet",
                    delivery.unit,
                    delivery.job_id[:6],
                )
                if self.metrics is not None:
                    self.metrics.queue_claims.inc()
            self.in_flight += 1
            if self.metrics is not None:
                self.metrics.queue_units_in_flight.set(self.in_flight)
            try:
                await self._handle(delivery)
            except QueueUnavailable as exc:
                log.error(
                    "unit %s of job %s: Redis lost: %s",
                    delivery.unit,
                    delivery.job_id[:6],
                    exc.detail,
                )
            except Exception:
                log.exception("unit %s of job %s failed", delivery.unit, delivery.job_id[:6])
            finally:
                self.in_flight -= 1
                if self.metrics is not None:
                    self.metrics.queue_units_in_flight.set(self.in_flight)

    async def _handle(self, delivery: Delivery) -> None:
        """Run one entry; acknowledge it, or hand it back when this replica stops."""
        heart = asyncio.create_task(self._heartbeat(delivery))
        try:
            done = await self._work(delivery)
        finally:
            heart.cancel()
            await asyncio.gather(heart, return_exceptions=True)
        if done:
            await self.queue.ack(delivery)
        else:
            await self.queue.hand_back(delivery)

    async def _heartbeat(self, delivery: Delivery) -> None:
        every = max(0.2, self.queue.claim_after_ms / 3000)
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(QueueUnavailable):
                await self.queue.touch(delivery)

    async def _work(self, delivery: Delivery) -> bool:
        """Run a unit or a finishing step; False when it must be left to another replica."""
        job_id = delivery.job_id
        try:
            record = await asyncio.to_thread(self.store.load, job_id, None, True)
        except NotFound:
            return True  # deleted meanwhile
        if record.finished or await self.queue.stopped(job_id):
            return True
        attempts = await self.queue.attempt(job_id, delivery.unit)
        if attempts > self.limits.max_resumes + 1:
            await self._fail(
                record,
                "interrupted",
                f"a part of the job was started {attempts - 1} times and its replica stopped "
                "each time (it may need more memory or time than a replica has)",
            )
            return True
        try:
            served = self.resolve(record.params["model"])
        except AttnserveError as exc:
            await self._fail(record, exc.code, exc.message)
            return True
        stop = asyncio.Event()
        watcher = asyncio.create_task(self._watch_stop(job_id, stop))
        lock = self.inputs.setdefault(job_id, asyncio.Lock())
        started = time.monotonic()
        step = "finish" if delivery.unit == FINISH else "unit"
        try:
            async with lock:  # one download of a job's input per replica
                await asyncio.to_thread(self.store.workspace, record)
            if delivery.unit == FINISH:
                await self._finish(record, served, stop)
            else:
                await self._unit(record, served, delivery.unit, stop)
        except JobCancelled:
            if self.stopping:
                await self.queue.forgive(job_id, delivery.unit)  # a clean stop: not a crash
                return False
            return True
        except AttnserveError as exc:
            await self._fail(record, exc.code, exc.message)
        except QueueUnavailable:
            raise
        except Exception:
            log.exception("job %s failed in %s %s", job_id[:6], step, delivery.unit)
            await self._fail(record, "internal_error", "the job failed on the server")
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        seconds = time.monotonic() - started
        if self.metrics is not None:
            self.metrics.queue_unit_seconds.labels(step).observe(seconds)
        log.info("job %s: %s %s took %.2f s", job_id[:6], step, delivery.unit, seconds)
        return True

    async def _watch_stop(self, job_id: str, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(POLL_S)
            with contextlib.suppress(QueueUnavailable):
                if await self.queue.stopped(job_id):
                    stop.set()

    async def _run_part(
        self, record: JobRecord, served: ServedModel, stop: asyncio.Event, part: ScenePart
    ) -> None:
        """Run one part of a job; it stops when the job is stopped or this replica is."""
        await self.runner.run(
            record, served, no_progress, lambda: self.stopping or stop.is_set(), part
        )

    async def _unit(
        self, record: JobRecord, served: ServedModel, index: int, stop: asyncio.Event
    ) -> None:
        unit = units_of(record)[index]
        partials = self.partials

        def save(partial: PartialSums) -> None:
            partials.put(record.id, unit.index, partial.to_bytes())

        try:
            await self._run_part(record, served, stop, UnitPass(unit, save))
        except UnitStored:
            await self.queue.unit_done(record.id, unit.index)
            return
        raise RuntimeError("the model's task ran a unit without storing it")

    async def _finish(self, record: JobRecord, served: ServedModel, stop: asyncio.Event) -> None:
        units = units_of(record)
        partials = self.partials

        def load(unit: Unit) -> PartialSums:
            return PartialSums.from_bytes(partials.get(record.id, unit.index))

        await self._run_part(record, served, stop, FinishPass(units, load))
        progress = await self.queue.progress(record.id)
        if progress is not None and progress.stop:
            return
        record.state = "done"
        record.progress = {"done": len(units), "total": len(units), "fraction": 1.0, "of": "units"}
        record.eta_s = 0.0
        if progress is not None:
            record.params["workers"] = progress.workers
            if progress.started is not None:
                record.seconds = round(time.time() - progress.started, 2)
        record.expires = time.time() + self.store.ttl_s
        await asyncio.to_thread(self.store.update, record)
        await asyncio.to_thread(partials.drop, record.id)
        await self.queue.forget(record.id)
        await self.queue.release(record.id, record.owner or ANONYMOUS)
        self.inputs.pop(record.id, None)

    async def _fail(self, record: JobRecord, code: str, message: str) -> None:
        """Fail a job on every replica: its units are dropped wherever they run.

        A job another replica finished meanwhile (this one ran its finishing
        step too, after a claim, and found the partials gone) stays done.
        """
        try:
            stored = await asyncio.to_thread(self.store.load, record.id, None, True)
        except NotFound:
            return
        if stored.finished:
            return
        await self.queue.stop(record.id, "failed")
        record.state = "failed"
        record.error = {"code": code, "message": message}
        with contextlib.suppress(NotFound):
            await asyncio.to_thread(self.store.update, record)
        with contextlib.suppress(NotFound):
            await asyncio.to_thread(self.partials.drop, record.id)
        await self.queue.release(record.id, record.owner or ANONYMOUS)
        log.error("job %s failed: %s", record.id[:6], message)
