"""Route tests against the app in process, on the shipped models."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.api.state import AppState
from service.app import create_app
from service.config import Settings
from tests.helpers.asgi import in_process

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
