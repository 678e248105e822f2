"""A live server: ``python -m service`` (or another command) in a subprocess on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_status_kib(pid: int, key: str) -> int | None:
    """A ``/proc/<pid>/status`` field in KiB (``VmRSS``, ``VmHWM``), None if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def serve_command(port: int) -> list[str]:
    """``python -m service`` on ``port`` of 127.0.0.1, with this interpreter."""
    return [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]


class LiveServer:
    """A real uvicorn server in a subprocess.

    Args:
        env: ``ATTNSERVE_*`` settings, over ``base_env`` (this process's environment
            unless given); the log level is ``warning`` unless ``env`` sets it.
        log: file for the server's output.
        prefix: a command the server runs under (e.g. ``py-spy record ... --``).
        command: the server's command for a port, ``python -m service`` by default.
        cwd: the server's working directory.
        base_env: the environment under ``env``.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        log: Path,
        prefix: list[str] | None = None,
        command: Callable[[int], list[str]] = serve_command,
        cwd: Path = REPO,
        base_env: Mapping[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        base = os.environ if base_env is None else base_env
        self.env = {**base, "ATTNSERVE_LOG_LEVEL": "warning", **env}
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*(prefix or []), *command(self.port)],
            env=self.env,
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._prefixed = bool(prefix)

    @property
    def pid(self) -> int:
        """The server's own process id (the child when run under a prefix command)."""
        if not self._prefixed:
            return self.proc.pid
        for _ in range(100):
            kids = _children(self.proc.pid)
            if kids:
                return kids[0]
            time.sleep(0.05)
        raise RuntimeError("the server process did not start under its prefix command")

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Block until ``/readyz`` answers 200; stops the server if it never does."""
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

    def rss_kib(self) -> int | None:
        """The server's resident memory now."""
        return proc_status_kib(self.pid, "VmRSS")

    def hwm_kib(self) -> int | None:
        """The server's peak resident memory since it started."""
        return proc_status_kib(self.pid, "VmHWM")

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM the server and wait; returns the exit code of the top process."""
        if self.proc.poll() is None:
            target = self.pid if self._prefixed else self.proc.pid
            os.kill(target, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()
        return int(self.proc.returncode)

    def __enter__(self) -> LiveServer:
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def settings_env(**settings: str) -> dict[str, str]:
    """``request_memory_mb="64"`` as ``{"ATTNSERVE_REQUEST_MEMORY_MB": "64"}``."""
    return {f"ATTNSERVE_{key.upper()}": value for key, value in settings.items()}


def start(
    model_dir: Path | str, tmp: Path, /, log: str = "server.log", **settings: str
) -> LiveServer:
    """A ready server of ``model_dir``'s models, its jobs in ``tmp/jobs``, its log in ``tmp``.

    ``settings`` come last, so ``model_dir=`` or ``job_dir=`` among them win.
    """
    env = {"ATTNSERVE_MODEL_DIR": str(model_dir), "ATTNSERVE_JOB_DIR": str(tmp / "jobs")}
    server = LiveServer({**env, **settings_env(**settings)}, tmp / log)
    server.wait_ready()
    return server


@contextmanager
def serving(model_dir: Path | str, tmp: Path, /, **settings: str) -> Iterator[LiveServer]:
    """``start`` a server for the ``with`` block; stopped after it."""
    server = start(model_dir, tmp, **settings)
    try:
        yield server
    finally:
        server.stop()


class RssSampler:
    """Samples a process's ``VmRSS`` every ``interval_s`` on a thread; keeps the peak."""

    def __init__(self, pid: int, interval_s: float = 0.2) -> None:
        self.pid = pid
        self.interval_s = interval_s
        self.peak_kib = 0
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        start = time.monotonic()
        while not self._stop.is_set():
            rss = proc_status_kib(self.pid, "VmRSS")
            if rss is not None:
                self.peak_kib = max(self.peak_kib, rss)
                self.samples.append((round(time.monotonic() - start, 2), rss))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
