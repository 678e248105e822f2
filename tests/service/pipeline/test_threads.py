"""Worker-thread calls that a shutdown's cancel-everything does not hide."""

from __future__ import annotations

import asyncio
import contextvars
import threading

from service.pipeline.threads import thread_future

WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


def test_cancelling_every_task_leaves_the_future_pending_until_its_thread_ends() -> None:
    started, finish = threading.Event(), threading.Event()

    def call() -> str:
        started.set()
        finish.wait(10)
        return WHO.get()

    async def run() -> tuple[bool, str]:
        WHO.set("request")
        future = thread_future(call)
        await asyncio.to_thread(started.wait, 10)
        # As the event loop's shutdown does: every task is cancelled.
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()
        await asyncio.sleep(0.05)
        pending = not future.done()
        finish.set()
        return pending, await future

    pending, who = asyncio.run(run())
    assert pending  # a to_thread task would read as done (cancelled) here
    assert who == "request"  # context variables reach the thread, as with to_thread
