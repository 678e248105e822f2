"""The app factory: the lifespan loads the models and serves them; each app stands alone."""

from __future__ import annotations

import asyncio
from pathlib import Path

from service.app import create_app
from service.config import Settings
from tests.helpers.asgi import in_process


def test_the_lifespan_loads_the_repository_and_apps_share_nothing(
    model_dir: Path, tmp_path: Path
) -> None:
    settings = Settings(model_dir=model_dir, job_dir=tmp_path / "jobs", warmup=False)
    app, other = create_app(settings), create_app(settings)
    assert app is not other

    async def scenario() -> None:
        async with in_process(app, ready_s=120) as client:
            served = {m["name"] for m in (await client.get("/models")).json()["models"]}
            assert served == {p.stem.rsplit("-", 1)[0] for p in model_dir.glob("*.onnx")}
            assert (await client.get("/healthz")).status_code == 200
            metrics = (await client.get("/metrics")).text
            assert 'attnserve_model_loaded{model="footprints"' in metrics
            app.state.attnserve.tiles._executor()  # as the first map request starts it

    asyncio.run(scenario())
    # Shutdown stops what the lifespan started, map tile workers included.
    assert app.state.attnserve.tiles._pool is None
    # The second app never started: no state was made for it at import or build time.
    assert not hasattr(other.state, "attnserve")
