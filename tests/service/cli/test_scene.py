"""``attnserve scene run --units-of JOB``: a job's units worked without the HTTP server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from service.jobs.local import LocalJobStore
from tests.helpers.bodies import upload
from tests.helpers.geotiff import geotiff, noise
from tests.helpers.redis_server import RedisServer
from tests.helpers.server import LiveServer


def test_without_a_queue_url_it_says_so(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.cli import main

    monkeypatch.delenv("ATTNSERVE_QUEUE_URL", raising=False)
    assert main(["scene", "run", "--units-of", "x" * 22]) == 2
    assert "ATTNSERVE_QUEUE_URL is not set" in capsys.readouterr().err


def test_a_job_left_by_a_stopped_server_is_finished_by_the_command(
    model_dir: Path,
    tmp_path: Path,
    redis_server: RedisServer,
    start_server: Callable[..., LiveServer],
) -> None:
    jobs = tmp_path / "shared-jobs"
    settings = {"job_dir": str(jobs), "queue_url": redis_server.url, "queue_unit_tiles": "2"}
    server = start_server(**settings)
    image = geotiff(noise(size=512, seed=2))
    answer = httpx.post(
        f"{server.url}/predict",
        timeout=60,
        **upload(image, **{"async": "true", "tile_size": "256"}),
    )
    assert answer.status_code == 202, answer.text
    job_id = answer.json()["job_id"]
    server.stop()  # SIGTERM: units it held go back to the queue at once

    env = {
        **os.environ,
        "ATTNSERVE_MODEL_DIR": str(model_dir),
        "ATTNSERVE_JOB_DIR": str(jobs),
        "ATTNSERVE_QUEUE_URL": redis_server.url,
        "ATTNSERVE_WARMUP": "false",
    }
    command = [sys.executable, "-m", "service.cli", "scene", "run", "--units-of", job_id]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"job {job_id}: done" in done.stdout
    record = LocalJobStore(jobs, ttl_s=60, scan=False).load(job_id, any_owner=True)
    assert record.state == "done"
    total = len(record.params["units"])
    workers = record.params["workers"]
    assert sum(workers.values()) == total
    worked_here = int(done.stdout.rsplit("units worked here: ", 1)[1])
    assert worked_here >= 1
    assert worked_here in workers.values()
