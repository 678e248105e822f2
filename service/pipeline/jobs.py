"""Async jobs: queued scene work, run in the background with progress, cancellable.

Jobs left queued or running by a stopped server are queued again on start (their
input is kept in the job directory), so accepted work is never silently lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from service.errors import AttnserveError, Conflict, NotFound, Overloaded
from service.jobs.store import JobRecord, JobStore
from service.pipeline.scene import JobCancelled, SceneRunner, elapsed_eta
from service.runtime.repository import ServedModel

log = logging.getLogger(__name__)

# Progress is written to disk at most this often, so that polling clients and
# other replicas see it without every tile costing a write.
PROGRESS_WRITE_S = 0.5


class JobManager:
    """Runs scene jobs one (or a few) at a time, in submission order.

    Args:
        store: the job store.
        runner: runs one job.
        resolve: finds the served model for a job's model reference.
        workers: jobs run at the same time.
        max_queued: most jobs waiting; more are refused (503).
    """

    def __init__(
        self,
        store: JobStore,
        runner: SceneRunner,
        resolve: Callable[[str], ServedModel],
        workers: int = 1,
        max_queued: int = 100,
    ) -> None:
        self.store = store
        self.runner = runner
        self.resolve = resolve
        self.workers = workers
        self.max_queued = max_queued
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._cancel: set[str] = set()
        self._running: dict[str, asyncio.Task[None]] = {}
        self._stopping = False

    @property
    def queued(self) -> int:
        """Jobs waiting to run."""
        return self._queue.qsize()

    async def start(self) -> None:
        """Start the workers and queue again what a stopped server left unfinished."""
        for record in await asyncio.to_thread(self.store.unfinished):
            if record.params.get("inputs"):
                record.state = "queued"
                record.progress = {"done": 0, "total": record.progress.get("total", 0)}
                record.extra["resumed"] = record.extra.get("resumed", 0) + 1
                self.store.update(record)
                self._queue.put_nowait(record.id)
                log.info("resuming job %s left unfinished by a previous run", record.id[:6])
            else:
                self._fail(record, "interrupted", "the server stopped before the job finished")
        self._tasks = [
            asyncio.create_task(self._work(), name=f"jobs-{i}") for i in range(self.workers)
        ]

    def submit(self, record: JobRecord) -> None:
        """Queue a job whose record and input are already in the store."""
        if self._queue.qsize() >= self.max_queued:
            raise Overloaded(f"{self.max_queued} jobs are already queued", retry_after_s=30)
        self._queue.put_nowait(record.id)

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
            record = self.store.load(job_id, owner=None, any_owner=True)
        except NotFound:
            return
        if record.finished or job_id in self._cancel:
            self._cancel.discard(job_id)
            return
        try:
            served = self.resolve(record.params["model"])
        except AttnserveError as exc:
            self._fail(record, exc.code, exc.message)
            return
        started = time.time()
        record.state = "running"
        record.progress = {"done": 0, "total": 0, "fraction": 0.0}
        self.store.update(record)
        last_write = 0.0

        def progress(done: int, total: int) -> None:
            nonlocal last_write
            record.progress = {"done": done, "total": total, "fraction": round(done / total, 4)}
            record.extra["eta_s"] = elapsed_eta(started, done, total)
            now = time.monotonic()
            if now - last_write >= PROGRESS_WRITE_S or done == total:
                last_write = now
                self.store.update(record)

        try:
            await self.runner.run(
                record, served, progress, lambda: self._stopping or job_id in self._cancel
            )
        except JobCancelled:
            self._interrupted(record)
            return
        except asyncio.CancelledError:
            self._interrupted(record)
            raise
        except AttnserveError as exc:
            self._fail(record, exc.code, exc.message)
            return
        except Exception:
            log.exception("job %s failed", job_id[:6])
            self._fail(record, "internal_error", "the job failed on the server")
            return
        record.state = "done"
        record.extra["eta_s"] = 0.0
        record.extra["seconds"] = round(time.time() - started, 2)
        record.expires = time.time() + self.store.ttl_s
        self.store.update(record)

    def _interrupted(self, record: JobRecord) -> None:
        if record.id in self._cancel:
            self._cancel.discard(record.id)
            record.state = "cancelled"
            record.error = {"code": "cancelled", "message": "cancelled by the client"}
        else:
            # The server is stopping: the job goes back to the queue, and the next
            # start runs it again from its stored input.
            record.state = "queued"
        self.store.update(record)

    def _fail(self, record: JobRecord, code: str, message: str) -> None:
        record.state = "failed"
        record.error = {"code": code, "message": message}
        with contextlib.suppress(NotFound):
            self.store.update(record)
