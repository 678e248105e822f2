"""The app with a shared queue in process, on a real redis-server: quotas, readiness, Redis loss."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import rasterio

from service.app import create_app
from service.config import Settings
from service.jobs.local import LocalJobStore
from service.pipeline.unit_worker import units_of
from tests.helpers.asgi import in_process
from tests.helpers.bodies import upload
from tests.helpers.geotiff import geotiff, noise
from tests.helpers.redis_server import RedisServer

KEY_A = "key-a-of-twenty-characters"
KEY_B = "key-b-of-twenty-characters"
A = {"authorization": f"Bearer {KEY_A}"}
B = {"authorization": f"Bearer {KEY_B}"}
SCENE = {"async": "true", "tile_size": "256"}
MODEL = {"name": "footprints", "version": "2.0.0", "task": "segmentation"}


def _settings(model_dir: Path, tmp_path: Path, url: str, **extra: Any) -> Settings:
    options: dict[str, Any] = {"api_keys": [KEY_A, KEY_B], **extra}
    return Settings(
        model_dir=model_dir,
        job_dir=tmp_path / "jobs",
        warmup=False,
        queue_url=url,
        queue_claim_after_s=2,
        **options,
    )


async def _follow(
    client: httpx.AsyncClient, job_id: str, timeout_s: float, headers: dict[str, str] = A
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body: dict[str, Any] = (await client.get(f"/jobs/{job_id}", headers=headers)).json()
        if body["state"] in ("done", "failed", "cancelled"):
            return body
        await asyncio.sleep(0.2)
    raise TimeoutError(job_id)


def test_the_eleventh_job_of_a_key_is_429_while_another_key_gets_202(
    model_dir: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    # A replica that accepts scene jobs but runs none of their units: all stay queued.
    image = geotiff(noise(size=256, seed=4))
    app = create_app(_settings(model_dir, tmp_path, redis_server.url, scene_workers=0))

    async def main() -> None:
        async with in_process(app, ready_s=120) as client:
            accepted = []
            for _ in range(10):
                answer = await client.post("/predict", headers=A, **upload(image, **SCENE))
                assert answer.status_code == 202, answer.text
                accepted.append(answer.json()["job_id"])
            refused = await client.post("/predict", headers=A, **upload(image, **SCENE))
            assert refused.status_code == 429, refused.text
            assert refused.json()["error"]["code"] == "too_many_requests"
            assert "QUEUE_MAX_JOBS_PER_KEY" in refused.json()["error"]["message"]
            assert int(refused.headers["retry-after"]) > 0
            other = await client.post("/predict", headers=B, **upload(image, **SCENE))
            assert other.status_code == 202, other.text
            # Cancelled jobs no longer count: the key gets 202 again.
            for job_id in accepted[:2]:
                gone = await client.delete(f"/jobs/{job_id}", headers=A)
                assert gone.status_code == 200, gone.text
            again = await client.post("/predict", headers=A, **upload(image, **SCENE))
            assert again.status_code == 202, again.text
            for job_id in [*accepted[2:], again.json()["job_id"]]:
                await client.delete(f"/jobs/{job_id}", headers=A)
            await client.delete(f"/jobs/{other.json()['job_id']}", headers=B)

    asyncio.run(main())


def test_redis_missing_at_start_keeps_the_replica_unready_with_the_reason(
    model_dir: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    redis_server.stop()
    app = create_app(_settings(model_dir, tmp_path, redis_server.url))

    async def main() -> None:
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://app") as client,
        ):
            deadline = time.monotonic() + 120
            while True:
                answer = await client.get("/readyz")
                body = answer.json()
                if not any("model repository" in r for r in body["reasons"]):
                    break  # models loaded: only the queue can keep it unready now
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            await asyncio.sleep(2.5)  # one look at Redis at least
            answer = await client.get("/readyz")
            assert answer.status_code == 503
            reasons = answer.json()["reasons"]
            assert any("shared work queue (Redis) cannot be reached" in r for r in reasons)
            assert answer.json()["queue"]["reachable"] is False
            redis_server.start()
            deadline = time.monotonic() + 30
            while (await client.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)

    asyncio.run(main())


def test_redis_lost_mid_run_refuses_new_scenes_keeps_sync_and_resumes_the_job(
    model_dir: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    app = create_app(_settings(model_dir, tmp_path, redis_server.url, queue_unit_tiles=4))
    image = geotiff(noise(size=1024, seed=8))

    async def main() -> None:
        async with in_process(app, ready_s=120) as client:
            answer = await client.post("/predict", headers=A, **upload(image, **SCENE))
            assert answer.status_code == 202, answer.text
            job_id = answer.json()["job_id"]
            deadline = time.monotonic() + 120
            while (await client.get(f"/jobs/{job_id}", headers=A)).json()["progress"]["done"] < 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            redis_server.stop()  # everything Redis held is gone
            refused = await client.post("/predict", headers=A, **upload(image, **SCENE))
            assert refused.status_code == 503, refused.text
            assert "Redis" in refused.json()["error"]["message"]
            assert "retry-after" in refused.headers
            small = geotiff(noise(size=128, seed=1))
            sync = await client.post("/predict", headers=A, **upload(small))
            assert sync.status_code == 200, sync.text
            await asyncio.sleep(1.0)
            assert (await client.get("/readyz")).status_code == 200  # still serving
            redis_server.start()
            body = await _follow(client, job_id, 300)
            assert body["state"] == "done", body
            record = app.state.attnserve.store.load(job_id, any_owner=True)
            assert body["progress"]["total"] == len(units_of(record))
            assert any("/files/" in url for url in body["links"].values())

    asyncio.run(main())


@pytest.mark.parametrize("url", ["http://x:1", "redis"])
def test_a_queue_url_that_is_not_redis_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="queue_url"):
        Settings(queue_url=url)


def test_a_job_queued_before_the_shared_queue_is_planned_and_run_once(
    model_dir: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    image = geotiff(noise(size=512, seed=6))
    store = LocalJobStore(tmp_path / "jobs", ttl_s=3600)
    record = store.new_record(MODEL, "raster", None)
    record.created -= 600  # left by an in-process server a while ago
    record.state = "queued"
    record.params = {"model": "footprints", "inputs": ["input_0.tif"], "options": {}}
    with rasterio.MemoryFile(image) as memory, memory.open() as dataset:
        record.georef = {
            "crs": dataset.crs.to_string(),
            "transform": list(dataset.transform)[:6],
            "width": dataset.width,
            "height": dataset.height,
        }
    store.save(record, {}, {"input_0.tif": image})
    first = create_app(_settings(model_dir, tmp_path, redis_server.url, api_keys=[]))
    second = create_app(_settings(model_dir, tmp_path, redis_server.url, api_keys=[]))

    async def main() -> None:
        async with in_process(first, ready_s=120) as one, in_process(second, ready_s=120):
            body = await _follow(one, record.id, 300, {})
            assert body["state"] == "done", body
            assert sum(body["workers"].values()) == body["progress"]["total"]

    asyncio.run(main())
    assert len(units_of(store.load(record.id))) >= 1


def test_no_scene_workers_needs_a_shared_queue() -> None:
    with pytest.raises(ValueError, match="scene_workers may be 0 only with a shared queue"):
        Settings(scene_workers=0)


def test_a_job_cancelled_on_one_replica_stops_on_the_other(
    model_dir: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    image = geotiff(noise(size=1536, seed=9))
    # The one that accepts runs no units: every unit runs on the other.
    accepting = create_app(_settings(model_dir, tmp_path, redis_server.url, scene_workers=0))
    working = create_app(_settings(model_dir, tmp_path, redis_server.url, queue_unit_tiles=2))

    async def main() -> None:
        async with in_process(accepting, ready_s=120) as one, in_process(working, ready_s=120):
            answer = await one.post("/predict", headers=A, **upload(image, **SCENE))
            assert answer.status_code == 202, answer.text
            job_id = answer.json()["job_id"]
            deadline = time.monotonic() + 120
            while True:
                body = (await one.get(f"/jobs/{job_id}", headers=A)).json()
                if body["progress"]["done"] >= 1:
                    break
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
            # Progress, ETA and the replica at work, as the accepting replica sees them.
            assert body["state"] == "running"
            assert body["eta_s"] is not None
            assert list(body["workers"].values()) == [body["progress"]["done"]]
            assert body["progress"]["total"] > body["progress"]["done"]
            gone = await one.delete(f"/jobs/{job_id}", headers=A)
            assert gone.status_code == 200, gone.text
            worker = working.state.attnserve.jobs.manager
            deadline = time.monotonic() + 5
            while await worker.queue.queued():
                assert time.monotonic() < deadline, "the cancelled job's units were not dropped"
                await asyncio.sleep(0.1)
            after = (await one.get(f"/jobs/{job_id}", headers=A)).json()
            assert after["state"] == "cancelled"
            assert after["progress"]["done"] < after["progress"]["total"]

    asyncio.run(main())
