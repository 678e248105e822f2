"""Route tests against the app in process, on the shipped models."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api.state import AppState
from service.app import create_app
from service.config import Settings
from tests.helpers.asgi import in_process
from tests.helpers.server import LiveServer, start

Scenario = Callable[[httpx.AsyncClient, AppState], Awaitable[None]]


@pytest.fixture
def served(model_dir: Path, tmp_path: Path) -> Callable[..., None]:
    """Run a scenario against a ready app of the shipped models (extra settings allowed)."""

    def run(scenario: Scenario, **settings: Any) -> None:
        app = create_app(
            Settings(model_dir=model_dir, job_dir=tmp_path / "jobs", warmup=False, **settings)
        )

        async def main() -> None:
            async with in_process(app, ready_s=120) as client:
                await scenario(client, app.state.attnserve)

        asyncio.run(main())

    return run


OWNER_KEY, OTHER_KEY = "key-of-the-owner", "key-of-someone-else"


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[LiveServer]:
    """A live server with two API keys (``OWNER_KEY``, ``OTHER_KEY``), shared by a module."""
    live = start(
        model_dir, tmp_path_factory.mktemp("keyed"), api_keys=json.dumps([OWNER_KEY, OTHER_KEY])
    )
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def owner(keyed_server: LiveServer) -> Iterator[httpx.Client]:
    """A client of ``keyed_server`` with ``OWNER_KEY``."""
    headers = {"Authorization": f"Bearer {OWNER_KEY}"}
    with httpx.Client(base_url=keyed_server.url, headers=headers) as client:
        yield client
