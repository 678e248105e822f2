"""The server's shared state in process, with some shipped models loaded, for one scenario."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from service.api.state import AppState
from service.app import build_state
from service.config import SHIPPED_MODELS, Settings
from service.jobs.record import JobRecord
from service.metrics import Metrics
from service.pipeline.intake import SyncRequest, UploadOptions

FOOTPRINTS = "footprints-2.2.0.onnx"
CROPS = "crops-1.0.0.onnx"


@contextlib.asynccontextmanager
async def loaded(tmp_path: Path, *models: str, **settings: Any) -> AsyncIterator[AppState]:
    """The server's state with ``models`` loaded (not warmed up), as the lifespan builds it."""
    model_dir = tmp_path / "models"
    model_dir.mkdir(exist_ok=True)
    for name in models:
        (model_dir / name).symlink_to(SHIPPED_MODELS / name)
    config = Settings(model_dir=model_dir, job_dir=tmp_path / "jobs", warmup=False, **settings)
    state = build_state(config, Metrics())
    await state.repository.load()
    try:
        yield state
    finally:
        await state.repository.stop(1.0)


def run(
    tmp_path: Path,
    models: tuple[str, ...],
    scenario: Callable[[AppState], Any],
    **settings: Any,
) -> Any:
    """Run ``scenario(state)`` on a fresh event loop with ``models`` served."""

    async def main() -> Any:
        async with loaded(tmp_path, *models, **settings) as state:
            return await scenario(state)

    return asyncio.run(main())


async def stored_upload(state: AppState, model: str, image: bytes) -> JobRecord:
    """Run one upload synchronously through intake and the job service; its stored record."""
    request = await state.intake.upload(state.repository.get(model), [image], UploadOptions())
    assert isinstance(request, SyncRequest)
    stored = await state.jobs.run(request, None)
    request.held.release()
    state.store.flush()
    return state.store.load(stored.record.id, None)
