"""Jobs that take the server down with them are resumed a bounded number of times."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.jobs.local import LocalJobStore
from service.jobs.record import JobRecord
from service.jobs.store import JobStore
from service.pipeline.jobs import JobManager
from tests.helpers.bodies import upload
from tests.helpers.scenes import tile_scene
from tests.helpers.server import LiveServer

MODEL = {"name": "footprints", "version": "1", "task": "segmentation"}


class HangingRunner:
    """Runs a job until the test stops or kills its process; notes each start in a file."""

    def __init__(self, marks: Path | None = None) -> None:
        self.started: list[str] = []
        self.marks = marks

    async def run(
        self,
        record: JobRecord,
        served: object,
        progress: Callable[[int, int], None],
        cancelled: Callable[[], bool],
    ) -> None:
        self.started.append(record.id)
        if self.marks is not None:
            with self.marks.open("a") as f:
                f.write(record.id + "\n")
        await asyncio.Event().wait()


def _no_model(ref: str) -> Any:
    """No model is needed: the runner never looks at it."""
    return object()


def _queued_job(store: JobStore) -> str:
    record = store.new_record(MODEL, "raster", None)
    record.state = "queued"
    record.params = {"model": "footprints", "inputs": ["input_0.tif"]}
    store.save(record, {}, files={"input_0.tif": b"not read by this runner"})
    return record.id


def _serve_jobs(root: Path, marks: Path, max_resumes: int) -> None:
    """A job manager's process: runs until killed."""

    async def serve() -> None:
        manager = JobManager(
            LocalJobStore(root, ttl_s=60),
            HangingRunner(marks),  # type: ignore[arg-type]
            _no_model,
            1,
            10,
            max_resumes,
        )
        await manager.start()
        await asyncio.Event().wait()

    asyncio.run(serve())


def _run_and_kill(root: Path, marks: Path, max_resumes: int) -> int:
    """Start a job manager in its own process, SIGKILL it once it starts a run (or after 90 s).

    Returns the number of runs it started.
    """
    before = len(marks.read_text().split()) if marks.exists() else 0
    process = multiprocessing.get_context("spawn").Process(
        target=_serve_jobs, args=(root, marks, max_resumes)
    )
    process.start()
    deadline = time.monotonic() + 90  # a spawned process imports rasterio: slow on a busy CPU
    while time.monotonic() < deadline:
        started = len(marks.read_text().split()) if marks.exists() else 0
        if started > before:
            break
        time.sleep(0.02)
    process.kill()
    process.join()
    return (len(marks.read_text().split()) if marks.exists() else 0) - before


def test_a_job_the_server_dies_on_is_failed_with_its_reason_after_the_resume_limit(
    tmp_path: Path,
) -> None:
    store = LocalJobStore(tmp_path / "jobs", ttl_s=60, fsync=False)
    job_id = _queued_job(store)
    marks = tmp_path / "runs.txt"
    for attempt in range(3):  # the first run, then 2 resumes, each killed mid-run
        assert _run_and_kill(store.root, marks, max_resumes=2) == 1, f"run {attempt + 1}"
        record = store.load(job_id)
        assert record.state == "running"
        assert record.runs == attempt + 1
    # The next start fails the job instead of running it a fourth time.
    process = multiprocessing.get_context("spawn").Process(
        target=_serve_jobs, args=(store.root, marks, 2)
    )
    process.start()
    try:
        deadline = time.monotonic() + 90
        while store.load(job_id).state != "failed" and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        process.kill()
        process.join()
    assert len(marks.read_text().split()) == 3
    record = store.load(job_id)
    assert record.state == "failed"
    assert record.error is not None
    assert record.error["message"].startswith("resumed 2 times; the server stopped while")


def test_a_clean_stop_does_not_count_towards_the_resume_limit(tmp_path: Path) -> None:
    store = LocalJobStore(tmp_path, ttl_s=60, fsync=False)
    job_id = _queued_job(store)

    async def run_then_stop() -> list[str]:
        runner = HangingRunner()
        manager = JobManager(store, runner, _no_model, 1, 10, 0)  # type: ignore[arg-type]
        await manager.start()
        while not runner.started:
            await asyncio.sleep(0.01)
        await manager.stop(grace_s=0)
        return runner.started

    for _ in range(3):
        assert asyncio.run(run_then_stop()) == [job_id]
    record = store.load(job_id)
    assert record.state == "queued"
    assert record.runs == 0


def test_start_up_does_not_wait_for_unfinished_jobs(tmp_path: Path) -> None:
    store = LocalJobStore(tmp_path, ttl_s=60, fsync=False)
    for _ in range(5):
        _queued_job(store)

    async def start() -> tuple[float, int]:
        runner = HangingRunner()
        manager = JobManager(store, runner, _no_model, 2, 10, 2)  # type: ignore[arg-type]
        began = time.perf_counter()
        await manager.start()
        took = time.perf_counter() - began
        for _ in range(100):
            await asyncio.sleep(0.01)
        await manager.stop(grace_s=0)
        return took, len(runner.started)

    # A slow volume: listing the unfinished jobs takes a while.
    original = store.unfinished

    def slow_unfinished() -> list[JobRecord]:
        time.sleep(0.5)
        return original()

    store.unfinished = slow_unfinished  # type: ignore[method-assign]
    took, started = asyncio.run(start())
    assert took < 0.1
    assert started == 2  # never more than the scene workers


def _follow_state(server: LiveServer, job_id: str, states: set[str], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = httpx.get(f"{server.url}/jobs/{job_id}", timeout=10).json()
        if body["state"] in states:
            return body
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} never reached {states}")


@pytest.mark.slow
def test_sigkill_during_a_job_twice_then_the_restart_fails_it(
    start_server: Callable[..., LiveServer], shared_data: Path, tmp_path: Path
) -> None:
    scene = tile_scene(shared_data / "cogeo.tif", 4, tmp_path / "scene.tif")
    settings = {
        "max_sync_pixels": str(1024 * 1024),
        "job_max_resumes": "1",
        "scene_tiles_in_flight": "1",
    }
    server = start_server(**settings)
    resp = httpx.post(f"{server.url}/predict", **upload(scene.read_bytes()), timeout=60)
    assert resp.status_code == 202, resp.text
    job_id = resp.json()["job_id"]
    for _ in range(2):  # the first run, then its one resume
        _follow_state(server, job_id, {"running"}, 60)
        server.proc.kill()
        server.proc.wait()
        began = time.monotonic()
        server = start_server(**settings)
        assert time.monotonic() - began < 30
    body = _follow_state(server, job_id, {"failed", "done"}, 30)
    assert body["state"] == "failed", body
    assert "resumed 1 times" in body["error"]["message"]


class SlowStore(LocalJobStore):
    """A job store whose updates take a while, as on a disk behind many dirty pages."""

    def update(self, record: JobRecord) -> None:
        time.sleep(0.3)
        super().update(record)


class LastTileRunner:
    """Reports both tiles at once, then finishes only when released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()

    async def run(
        self,
        record: JobRecord,
        served: object,
        progress: Callable[[int, int], None],
        cancelled: Callable[[], bool],
    ) -> None:
        progress(1, 2)
        progress(2, 2)  # while the first snapshot is still being written
        await self.release.wait()


def test_the_last_progress_is_written_even_behind_a_slow_write(tmp_path: Path) -> None:
    async def scenario() -> dict[str, Any]:
        store = SlowStore(tmp_path, ttl_s=60)
        job = _queued_job(store)
        runner = LastTileRunner()
        manager = JobManager(store, runner, _no_model, 1, 10, 3)  # type: ignore[arg-type]
        await manager.start()
        deadline = time.monotonic() + 20
        progress: dict[str, Any] = {}
        while time.monotonic() < deadline:
            record = await asyncio.to_thread(store.load, job, any_owner=True)
            progress = record.progress
            if record.state == "running" and progress.get("done") == 2:
                break
            await asyncio.sleep(0.1)
        runner.release.set()
        await manager.stop(5)
        return progress

    assert asyncio.run(scenario()) == {"done": 2, "total": 2, "fraction": 1.0}
