"""An app served in process: its lifespan running and an httpx client on it, once ready."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

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
