"""Async jobs: queued scene work, run in the background with progress, cancellable.

Jobs left queued or running by a stopped server are queued again on start (their
input is kept in the job directory), so accepted work is never silently lost.
Each run is counted on disk before it starts, so a job that takes the server
down with it (say, out of memory) is counted even though nothing ran its error
path; past ``max_resumes`` such restarts it is failed instead of run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from service.errors import AttnserveError, Conflict, NotFound, Overloaded
from service.jobs.record import JobRecord
from service.jobs.store import JobStore
from service.pipeline.eta import elapsed_eta
from service.pipeline.scene import SceneRunner
from service.pipeline.scene_grid import JobCancelled
from service.runtime.repository import ServedModel

log = logging.getLogger(__name__)

# Progress is written to disk at most this often, so that polling clients and
# other replicas see it without every tile costing a write.
PROGRESS_WRITE_S = 0.5


@dataclass(eq=False)
class JobManager:
    """Runs scene jobs one (or a few) at a time, in submission order.

    Attributes:
        store: the job store.
        runner: runs one job.
        resolve: finds the served model for a job's model reference.
        workers: jobs run at the same time.
        max_queued: most jobs waiting; more are refused (503).
        max_resumes: times a job that was running when the server stopped (or
            died) is run again; once more and it is failed instead.
    """

    store: JobStore
    runner: SceneRunner
    resolve: Callable[[str], ServedModel]
    workers: int = 1
    max_queued: int = 100
    max_resumes: int = 2
    _queue: asyncio.Queue[str] = field(default_factory=asyncio.Queue, init=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, init=False)
    _cancel: set[str] = field(default_factory=set, init=False)
    _running: dict[str, asyncio.Task[None]] = field(default_factory=dict, init=False)
    _stopping: bool = field(default=False, init=False)
    _resumer: asyncio.Task[None] | None = field(default=None, init=False)

    @property
    def queued(self) -> int:
        """Jobs waiting to run."""
        return self._queue.qsize()

    async def start(self) -> None:
        """Start the workers; what a stopped server left unfinished is queued in the background.

        Readiness never waits for that scan: the job directory may be large or slow.
        """
        self._tasks = [
            asyncio.create_task(self._work(), name=f"jobs-{i}") for i in range(self.workers)
        ]
        self._resumer = asyncio.create_task(
            self._resume_unfinished(time.time()), name="jobs-resume"
        )

    async def _resume_unfinished(self, started: float) -> None:
        try:
            records = await asyncio.to_thread(self.store.unfinished)
        except OSError as exc:
            log.error("unfinished jobs could not be listed: %s", exc)
            return
        for record in records:
            if self._stopping:
                return
            if record.created >= started:
                continue  # submitted to this server while the scan ran: already queued
            if await asyncio.to_thread(self._requeue, record):
                self._queue.put_nowait(record.id)
                log.info("resuming job %s left unfinished by a previous run", record.id[:6])

    def _requeue(self, record: JobRecord) -> bool:
        """Mark a job left unfinished as queued again, or fail it; True if it is to run."""
        if not record.params.get("inputs") and not record.params.get("references"):
            self._fail(record, "interrupted", "the server stopped before the job finished")
            return False
        if self._poisoned(record):
            return False
        if record.state == "running":
            record.resumed += 1
        record.state = "queued"
        record.progress = {"done": 0, "total": record.progress.get("total", 0)}
        try:
            self.store.update(record)
        except NotFound:
            return False
        return True

    def _poisoned(self, record: JobRecord) -> bool:
        """Fail a job whose every run so far ended with the server; True if it was failed.

        ``runs`` is written before each run starts and taken back when a run
        ends cleanly (done, failed, or stopped on shutdown), so what is left
        counts the runs that never got to their end.
        """
        crashed = record.runs
        if crashed <= self.max_resumes:
            return False
        self._fail(
            record,
            "interrupted",
            f"resumed {self.max_resumes} times; the server stopped while running it each "
            "time (it may need more memory or time than the server has)",
        )
        log.error(
            "job %s failed: the server stopped during all its %d runs", record.id[:6], crashed
        )
        return True

    def submit(self, record: JobRecord) -> None:
        """Queue a job whose record and input are already in the store."""
        if self._queue.qsize() >= self.max_queued:
            raise Overloaded(f"{self.max_queued} jobs are already queued", retry_after_s=30)
        self._queue.put_nowait(record.id)

    async def enqueue(self, record: JobRecord) -> None:
        """Queue a stored job (as :meth:`submit`; the face a shared queue shows too)."""
        self.submit(record)

    async def live(self, record: JobRecord) -> dict[str, Any]:
        """Nothing to add to a job's answer: its record says it all in-process."""
        return {}

    def problem(self) -> str | None:
        """Why scene jobs cannot run: never, in-process."""
        return None

    def status(self) -> dict[str, Any]:
        """The queue as readiness shows it."""
        return {"shared": False}

    def cancel(self, record: JobRecord) -> JobRecord:
        """Cancel a queued or running job."""
        if record.finished:
            raise Conflict(f"job is already {record.state}")
        self._cancel.add(record.id)
        task = self._running.get(record.id)
        if task is None:
            record.state = "cancelled"
            record.error = {"code": "cancelled", "message": "cancelled by the client"}
            self.store.update(record)
        return record

    async def stop(self, grace_s: float) -> None:
        """Stop taking jobs; running ones stop after their tiles in flight, to resume later."""
        self._stopping = True
        if self._resumer is not None:
            self._resumer.cancel()
            await asyncio.gather(self._resumer, return_exceptions=True)
        running = list(self._running.values())
        if running:
            _, pending = await asyncio.wait(running, timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _work(self) -> None:
        while True:
            job_id = await self._queue.get()
            if self._stopping:
                return
            if job_id in self._running:
                continue  # queued twice (resumed as well as submitted): it runs once
            task = asyncio.create_task(self._run(job_id), name=f"job-{job_id[:6]}")
            self._running[job_id] = task
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
                raise
            finally:
                self._running.pop(job_id, None)

    async def _run(self, job_id: str) -> None:
        try:
            record = await asyncio.to_thread(self.store.load, job_id, None, True)
        except NotFound:
            return
        if record.finished or job_id in self._cancel:
            self._cancel.discard(job_id)
            return
        try:
            served = self.resolve(record.params["model"])
        except AttnserveError as exc:
            await asyncio.to_thread(self._fail, record, exc.code, exc.message)
            return
        if await asyncio.to_thread(self._poisoned, record):
            return
        started = time.time()
        record.state = "running"
        record.progress = {"done": 0, "total": 0, "fraction": 0.0}
        # Counted on disk before the run: if it takes the server down, the count stays.
        record.runs += 1
        try:
            await asyncio.to_thread(self.store.update, record)
        except NotFound:
            return
        last_write = 0.0
        writing: asyncio.Task[None] | None = None

        def progress(done: int, total: int) -> None:
            nonlocal last_write, writing
            record.progress = {"done": done, "total": total, "fraction": round(done / total, 4)}
            record.eta_s = elapsed_eta(started, done, total)
            now = time.monotonic()
            if writing is not None and not writing.done():
                if done == total:
                    # No later progress catches up with the last one: written after
                    # the one in flight, so the finishing phase shows every tile done.
                    writing = asyncio.create_task(self._write_after(writing, copy.deepcopy(record)))
                return  # the disk is slow: skip this one, the next progress catches up
            if now - last_write >= PROGRESS_WRITE_S or done == total:
                last_write = now
                # Written on a worker thread: an fsync behind gigabytes of dirty
                # pages can take seconds, which the event loop must not wait for.
                writing = asyncio.create_task(self._write_quietly(copy.deepcopy(record)))

        try:
            await self.runner.run(
                record, served, progress, lambda: self._stopping or job_id in self._cancel
            )
        except JobCancelled:
            await self._settle_write(writing)
            await asyncio.to_thread(self._interrupted, record)
            return
        except asyncio.CancelledError:
            await self._settle_write(writing)
            await asyncio.to_thread(self._interrupted, record)
            raise
        except AttnserveError as exc:
            await self._settle_write(writing)
            self._ran(record)
            await asyncio.to_thread(self._fail, record, exc.code, exc.message)
            return
        except Exception:
            log.exception("job %s failed", job_id[:6])
            await self._settle_write(writing)
            self._ran(record)
            await asyncio.to_thread(
                self._fail, record, "internal_error", "the job failed on the server"
            )
            return
        await self._settle_write(writing)
        record.state = "done"
        self._ran(record)
        record.eta_s = 0.0
        record.seconds = round(time.time() - started, 2)
        record.expires = time.time() + self.store.ttl_s
        with contextlib.suppress(NotFound):
            await asyncio.to_thread(self.store.update, record)

    async def _write_after(self, before: asyncio.Task[None], record: JobRecord) -> None:
        """Write a progress snapshot once the write ``before`` it has landed."""
        await asyncio.gather(asyncio.shield(before), return_exceptions=True)
        await self._write_quietly(record)

    async def _write_quietly(self, record: JobRecord) -> None:
        """Write a progress snapshot; a job deleted meanwhile is the runner's concern."""
        try:
            await asyncio.to_thread(self.store.update, record)
        except NotFound:
            pass
        except OSError as exc:
            log.warning("progress of job %s not written: %s", record.id[:6], exc)

    @staticmethod
    async def _settle_write(writing: asyncio.Task[None] | None) -> None:
        # A progress snapshot landing after the final state would undo it.
        if writing is not None:
            await asyncio.gather(asyncio.shield(writing), return_exceptions=True)

    @staticmethod
    def _ran(record: JobRecord) -> None:
        # The run reached its end (done, failed, cancelled, stopped on shutdown):
        # it does not count towards max_resumes.
        record.runs = max(0, record.runs - 1)

    def _interrupted(self, record: JobRecord) -> None:
        self._ran(record)
        if record.id in self._cancel:
            self._cancel.discard(record.id)
            record.state = "cancelled"
            record.error = {"code": "cancelled", "message": "cancelled by the client"}
        else:
            # The server is stopping: the job goes back to the queue, and the next
            # start runs it again from its stored input.
            record.state = "queued"
        with contextlib.suppress(NotFound):
            self.store.update(record)

    def _fail(self, record: JobRecord, code: str, message: str) -> None:
        record.state = "failed"
        record.error = {"code": code, "message": message}
        with contextlib.suppress(NotFound):
            self.store.update(record)
