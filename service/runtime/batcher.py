"""A dynamic batcher: groups concurrent requests into one session run.

Requests wait at most ``max_queue_delay_ms`` for company, unless the last batch
ran a single request and nothing arrived while it ran (a lone client: nobody is
coming, so waiting only adds latency). A batch holds at most ``max_batch_size``
rows; the queue holds at most ``max_queue_size`` requests and refuses more with
:class:`Overloaded`. Inference runs on a worker thread, off the event loop, and
each request gets back exactly its own rows.

With helper sessions (CPU instances), batches run side by side while requests
queue up: each helper is a session with a share of the cores, and the queue is
split between the free helpers. A request that finds nothing else waiting and
nothing running still runs alone on the main session, with every core, so a
lone client keeps the lowest latency. The main session and the helpers never
run at the same time.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from service.errors import AttnserveError, DeadlineExceeded, InferenceFailed, NotReady, Overloaded
from service.runtime.feeds import Feed, Padding, rows_of

log = logging.getLogger(__name__)

RunFn = Callable[[Feed], Feed]


class BatchObserver(Protocol):
    """Receives the batcher's measurements (the server forwards them to Prometheus)."""

    def queue_depth(self, depth: int) -> None:
        """The number of requests waiting changed."""

    def batch_done(self, rows: int, waits_s: Sequence[float], run_s: float) -> None:
        """A batch of ``rows`` rows ran in ``run_s``; each request waited ``waits_s``."""

    def batch_failed(self, rows: int) -> None:
        """A batch failed in the session."""


@dataclass
class _Pending:
    feed: Feed
    rows: int
    key: tuple[object, ...]
    lengths: dict[str, int]
    future: asyncio.Future[Feed]
    deadline: float
    enqueued: float


class DynamicBatcher:
    """Batches requests for one model session.

    Args:
        name: the model reference, for logs.
        run: runs one batch (a session's ``run``), called on a worker thread.
        max_batch_size: most rows in one batch.
        max_queue_delay_ms: longest a request waits for others to join it.
        max_queue_size: most requests waiting; more are refused.
        padding: how to pad inputs of different lengths (temporal models).
        observer: receives measurements.
        helpers: more sessions' ``run``, used side by side when requests queue.
    """

    def __init__(
        self,
        name: str,
        run: RunFn,
        *,
        max_batch_size: int,
        max_queue_delay_ms: float,
        max_queue_size: int,
        padding: Padding | None = None,
        observer: BatchObserver | None = None,
        helpers: Sequence[RunFn] = (),
    ) -> None:
        self.name = name
        self._run = run
        self.max_batch_size = max_batch_size
        self.max_queue_delay_s = max_queue_delay_ms / 1000.0
        self.max_queue_size = max_queue_size
        self.padding = padding or Padding()
        self.observer = observer
        self._queue: collections.deque[_Pending] = collections.deque()
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False
        self.helpers = len(helpers)
        self._free_helpers: list[RunFn] = list(helpers)
        self._helper_tasks: set[asyncio.Task[None]] = set()
        # Requests submitted so far, and whether the last batch was one request
        # with no other arriving before it finished.
        self._arrivals = 0
        self._alone = False
        # Mean seconds per row, for Retry-After when the queue is full.
        self._row_seconds = 0.01

    @property
    def queue_depth(self) -> int:
        """Requests waiting to be batched."""
        return len(self._queue)

    @property
    def running(self) -> bool:
        """Whether the batcher accepts work."""
        return self._task is not None and not self._closing

    async def start(self) -> None:
        """Start the batching loop on the running event loop."""
        self._arrived = asyncio.Event()
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, self.helpers), thread_name_prefix=f"infer-{self.name}"
        )
        self._closing = False
        self._task = asyncio.create_task(self._loop(), name=f"batcher-{self.name}")

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting work, finish what is queued within ``grace_s``, then stop."""
        self._closing = True
        if self._arrived is not None:
            self._arrived.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), grace_s)
            except TimeoutError:
                self._task.cancel()
            self._task = None
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(NotReady("server is shutting down"))
        self._queue.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    async def submit(self, feed: Feed, timeout_s: float) -> Feed:
        """Run ``feed`` (batch-first arrays) through the model, batched with others.

        Requests with more rows than ``max_batch_size`` are split into chunks,
        two in flight at a time so the queue is never flooded by one caller.

        Raises:
            Overloaded: the queue is full.
            DeadlineExceeded: no result within ``timeout_s``.
            InferenceFailed: the session failed on the batch.
        """
        rows = rows_of(feed)
        deadline = time.monotonic() + timeout_s
        if rows <= self.max_batch_size:
            return await self._submit_one(feed, rows, deadline)
        starts = range(0, rows, self.max_batch_size)
        gate = asyncio.Semaphore(2)

        async def chunk(start: int) -> Feed:
            async with gate:
                part = {k: v[start : start + self.max_batch_size] for k, v in feed.items()}
                return await self._submit_one(part, rows_of(part), deadline)

        tasks = [asyncio.ensure_future(chunk(s)) for s in starts]
        try:
            parts = await asyncio.gather(*tasks)
        except BaseException:
            for t in tasks:
                t.cancel()
            raise
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    async def _submit_one(self, feed: Feed, rows: int, deadline: float) -> Feed:
        if not self.running or self._arrived is None:
            raise NotReady(f"model {self.name} is not accepting requests")
        if len(self._queue) >= self.max_queue_size:
            raise Overloaded(
                f"model {self.name} queue is full ({self.max_queue_size} requests waiting)",
                retry_after_s=self._retry_after(),
            )
        lengths = self.padding.lengths(feed)
        key = self.padding.batch_key(feed)
        future: asyncio.Future[Feed] = asyncio.get_running_loop().create_future()
        now = time.monotonic()
        self._queue.append(_Pending(feed, rows, key, lengths, future, deadline, now))
        self._arrivals += 1
        self._notify_depth()
        self._arrived.set()
        try:
            # On timeout or cancellation wait_for cancels the future, so the loop
            # skips the request if it has not been batched yet.
            return await asyncio.wait_for(future, max(0.0, deadline - now))
        except TimeoutError:
            raise DeadlineExceeded(f"model {self.name} did not answer in time") from None

    def _retry_after(self) -> float:
        waiting_rows = sum(p.rows for p in self._queue)
        return max(1.0, math.ceil(waiting_rows * self._row_seconds))

    def _notify_depth(self) -> None:
        if self.observer is not None:
            self.observer.queue_depth(len(self._queue))

    async def _loop(self) -> None:
        assert self._arrived is not None
        while True:
            helpers_busy = bool(self._helper_tasks)
            if not self._queue or (helpers_busy and not self._free_helpers):
                if self._closing and not self._queue and not helpers_busy:
                    return
                # Set again by the next arrival or the next helper to finish.
                self._arrived.clear()
                await self._arrived.wait()
                continue
            if helpers_busy:
                self._dispatch_helpers()
                continue
            await self._wait_for_company()
            if self._free_helpers and len(self._queue) > 1:
                self._dispatch_helpers()
                continue
            batch = self._take_batch()
            if batch:
                await self._run_batch(batch, self._run)

    def _dispatch_helpers(self) -> None:
        """Share the queue out between the free helpers, one batch each.

        A helper's batch holds at most its share of ``max_batch_size``, so the
        helpers together hold no more rows (nor working memory) than one batch.
        """
        per_helper = max(1, self.max_batch_size // self.helpers)
        while self._queue and self._free_helpers:
            queued = sum(p.rows for p in self._queue)
            share = -(-queued // len(self._free_helpers))
            batch = self._take_batch(min(share, per_helper))
            if not batch:
                continue
            run = self._free_helpers.pop()
            task = asyncio.create_task(self._run_batch(batch, run))
            self._helper_tasks.add(task)
            task.add_done_callback(functools.partial(self._helper_done, run))

    def _helper_done(self, run: RunFn, task: asyncio.Task[None]) -> None:
        self._helper_tasks.discard(task)
        self._free_helpers.append(run)
        if self._arrived is not None:
            self._arrived.set()

    async def _wait_for_company(self) -> None:
        assert self._arrived is not None
        oldest = self._queue[0].enqueued
        if self._alone and len(self._queue) == 1:
            return
        while not self._closing:
            if sum(p.rows for p in self._queue) >= self.max_batch_size:
                return
            remaining = oldest + self.max_queue_delay_s - time.monotonic()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    def _take_batch(self, max_rows: int | None = None) -> list[_Pending]:
        """The oldest request and those after it that can share its batch.

        ``max_rows``: fewer rows than ``max_batch_size`` (a helper's share); the
        first request is taken whatever its size.
        """
        limit = max_rows or self.max_batch_size
        now = time.monotonic()
        first_key = None
        batch: list[_Pending] = []
        kept: collections.deque[_Pending] = collections.deque()
        rows = 0
        while self._queue:
            pending = self._queue.popleft()
            if pending.future.done():
                continue  # the caller gave up (deadline or disconnect)
            if pending.deadline <= now:
                pending.future.set_exception(
                    DeadlineExceeded(f"model {self.name} did not answer in time")
                )
                continue
            if first_key is None:
                first_key = pending.key
            if pending.key == first_key and (not batch or rows + pending.rows <= limit):
                batch.append(pending)
                rows += pending.rows
            else:
                kept.append(pending)
        self._queue = kept
        self._notify_depth()
        return batch

    async def _run_batch(self, batch: list[_Pending], run: RunFn) -> None:
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        rows = sum(p.rows for p in batch)
        arrivals = self._arrivals
        feed = self.padding.merge([p.feed for p in batch])
        try:
            outputs = await loop.run_in_executor(self._executor, run, feed)
        except AttnserveError as exc:
            self._fail(batch, exc, rows)
            return
        except Exception as exc:
            log.exception("batch of %d rows failed for %s", rows, self.name)
            self._fail(batch, InferenceFailed(f"inference failed for model {self.name}"), rows)
            del exc
            return
        finally:
            self._alone = len(batch) == 1 and self._arrivals == arrivals
        run_s = time.monotonic() - started
        self._row_seconds = 0.8 * self._row_seconds + 0.2 * (run_s / max(rows, 1))
        owns = self.padding.split(outputs, [(p.rows, p.lengths) for p in batch])
        for pending, own in zip(batch, owns, strict=True):
            if not pending.future.done():
                pending.future.set_result(own)
        if self.observer is not None:
            self.observer.batch_done(rows, [started - p.enqueued for p in batch], run_s)

    def _fail(self, batch: list[_Pending], exc: Exception, rows: int) -> None:
        if self.observer is not None:
            self.observer.batch_failed(rows)
        for pending in batch:
            if not pending.future.done():
                pending.future.set_exception(exc)
