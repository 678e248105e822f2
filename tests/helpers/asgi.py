"""An app served in process: its lifespan running and an httpx client on it, once ready."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI


@asynccontextmanager
async def in_process(app: FastAPI, ready_s: float = 60) -> AsyncIterator[httpx.AsyncClient]:
    """Run ``app``'s lifespan and yield a client to it once ``/readyz`` answers 200."""
    transport = httpx.ASGITransport(app=app)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=transport, base_url="http://app") as client,
    ):
        deadline = time.monotonic() + ready_s
        while (await client.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        yield client


class SyncClient:
    """Blocking requests to an ASGI app in this process, without its lifespan.

    Args:
        app: the app.
        raise_app_exceptions: re-raise an app's unhandled errors; False answers them
            as a server would (the app's own 500).
    """

    def __init__(self, app: Any, raise_app_exceptions: bool = True) -> None:
        self.transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """One request on an event loop of its own."""

        async def send() -> httpx.Response:
            async with httpx.AsyncClient(transport=self.transport, base_url="http://app") as c:
                return await c.request(method, url, **kwargs)

        return asyncio.run(send())

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        """GET ``url``."""
        return self.request("GET", url, **kwargs)

    def head(self, url: str, **kwargs: Any) -> httpx.Response:
        """HEAD ``url``."""
        return self.request("HEAD", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        """POST to ``url``."""
        return self.request("POST", url, **kwargs)
