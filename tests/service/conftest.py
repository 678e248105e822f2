"""Fixtures for the server's tests: real data files, the shipped models, live servers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from service.config import SHIPPED_MODELS

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data" / "geotiff"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data/geotiff``: real rasters nobody on this project made."""
    if not SHARED.is_dir():
        pytest.fail(f"shared data not found at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def model_dir() -> Path:
    """The shipped model repository."""
    return Path(os.environ.get("ATTNSERVE_TEST_MODEL_DIR", SHIPPED_MODELS))


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """A real uvicorn server in a subprocess, on 127.0.0.1."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, **env, "ATTNSERVE_LOG_LEVEL": "warning"}
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(self.port)],
            env=full_env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self.log_path = log

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until ``/readyz`` answers 200."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"server exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"server not ready: {self.log_path.read_text()[-2000:]}")

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()
        return int(self.proc.returncode)


@pytest.fixture
def start_server(tmp_path: Path, model_dir: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start live servers with extra ``ATTNSERVE_*`` settings; all stopped at teardown."""
    servers: list[LiveServer] = []

    def start(**settings: str) -> LiveServer:
        env = {
            "ATTNSERVE_MODEL_DIR": str(model_dir),
            "ATTNSERVE_JOB_DIR": str(tmp_path / "jobs"),
        }
        env.update({f"ATTNSERVE_{k.upper()}": v for k, v in settings.items()})
        server = LiveServer(env, tmp_path / f"server-{len(servers)}.log")
        servers.append(server)
        server.wait_ready()
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[LiveServer]:
    """One live server with default settings, shared by a module's tests."""
    tmp = tmp_path_factory.mktemp("live")
    server = LiveServer(
        {"ATTNSERVE_MODEL_DIR": str(model_dir), "ATTNSERVE_JOB_DIR": str(tmp / "jobs")},
        tmp / "server.log",
    )
    server.wait_ready()
    yield server
    server.stop()
