"""What a case measures while it runs: the server's memory and how fast /healthz answers."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

from tests.helpers.server import proc_status_kib


class MemoryWatch:
    """Samples ``VmRSS`` every ``interval_s``; SIGKILLs the server past ``cap_mb``.

    The cap keeps one runaway case from taking the machine (and the other
    processes on it) down: a case that crosses it is recorded as killed above
    the cap. It also kills the server if the job volume gets below
    ``min_free_gb``, since a scene job's partial files can be large.
    """

    def __init__(
        self,
        pid: int,
        cap_mb: float,
        disk: Path,
        min_free_gb: float = 15.0,
        interval_s: float = 0.1,
    ) -> None:
        self.pid = pid
        self.cap_kib = int(cap_mb * 1024)
        self.disk = disk
        self.min_free = min_free_gb * 2**30
        self.interval_s = interval_s
        self.peak_kib = 0
        self.killed: str | None = None
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="memory-watch", daemon=True)
        self._t0 = time.monotonic()

    def _run(self) -> None:
        last_disk = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            rss = proc_status_kib(self.pid, "VmRSS")
            if rss is not None:
                self.peak_kib = max(self.peak_kib, rss)
                self.samples.append((round(now - self._t0, 2), rss))
                if rss > self.cap_kib and self.killed is None:
                    self.killed = f"killed above {self.cap_kib // 1024} MiB"
                    self._kill()
            if now - last_disk > 1.0:
                last_disk = now
                if shutil.disk_usage(self.disk).free < self.min_free and self.killed is None:
                    self.killed = "killed: job volume below its free-space floor"
                    self._kill()
            self._stop.wait(self.interval_s)

    def _kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    def rss_mb(self) -> float | None:
        """The server's resident memory now, in MiB (None when it is gone)."""
        rss = proc_status_kib(self.pid, "VmRSS")
        return None if rss is None else round(rss / 1024, 1)

    def mark(self) -> int:
        """The index of the next sample: a case's peak is taken from its own samples."""
        return len(self.samples)

    def peak_since(self, index: int) -> float:
        """Peak sampled RSS (MiB) from sample ``index`` on."""
        return round(max((s[1] for s in self.samples[index:]), default=0) / 1024, 1)

    def start(self) -> MemoryWatch:
        """Start sampling."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop sampling."""
        self._stop.set()
        self._thread.join()


class HealthProbe:
    """GETs ``/healthz`` every ``interval_s`` on its own connection and keeps each latency.

    A probe that gets no answer within ``timeout_s`` counts as ``timeout_s``
    (and as a failure), so a stalled event loop shows up as a long latency.
    """

    def __init__(self, port: int, interval_s: float = 0.25, timeout_s: float = 10.0) -> None:
        self.port = port
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.latencies: list[tuple[float, float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-probe", daemon=True)
        self._t0 = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            ok = self._probe()
            took = time.monotonic() - started
            self.latencies.append((round(started - self._t0, 2), round(took, 4), ok))
            self._stop.wait(max(0.0, self.interval_s - took))

    def _probe(self) -> bool:
        # A fresh connection per probe, as a kubelet's; raw HTTP/1.1, so the client's
        # own set-up (an HTTP library builds an SSL context per client) is not timed.
        request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        try:
            with socket.create_connection(("127.0.0.1", self.port), self.timeout_s) as s:
                s.settimeout(self.timeout_s)
                s.sendall(request)
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
        except OSError:
            return False
        return data.startswith(b"HTTP/1.1 200")

    def mark(self) -> int:
        """The index of the next probe."""
        return len(self.latencies)

    def slow(self, index: int, since: float, over_s: float = 1.0) -> list[list[float]]:
        """Probes from ``index`` on slower than ``over_s``: [seconds after ``since``, latency]."""
        offset = since - self._t0
        return [
            [round(t - offset, 1), lat] for t, lat, _ in self.latencies[index:] if lat > over_s
        ][:20]

    def summary(self, index: int = 0) -> dict[str, float | int]:
        """Count, failures, p50, p99 and max latency (s) of the probes from ``index`` on."""
        probes = self.latencies[index:]
        lat = sorted(t for _, t, _ in probes)
        if not lat:
            return {"n": 0, "failures": 0, "p50_s": 0.0, "p99_s": 0.0, "max_s": 0.0}
        return {
            "n": len(lat),
            "failures": sum(1 for *_, ok in probes if not ok),
            "p50_s": round(lat[len(lat) // 2], 3),
            "p99_s": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 3),
            "max_s": round(lat[-1], 3),
        }

    def start(self) -> HealthProbe:
        """Start probing."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop probing."""
        self._stop.set()
        self._thread.join(self.timeout_s + 1)
