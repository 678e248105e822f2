"""Worker-thread calls whose end the event loop can still wait for after a cancel."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def thread_future(call: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """``call(*args)`` on a worker thread, as ``asyncio.to_thread`` runs it, as a plain future.

    ``to_thread`` is a task, and the event loop's shutdown cancels every task:
    a cancelled task no longer says when its thread ends. Nothing cancels this
    future, so it is done exactly when the call is.
    """
    bound = functools.partial(contextvars.copy_context().run, call, *args)
    return asyncio.get_running_loop().run_in_executor(None, bound)
