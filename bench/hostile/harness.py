"""Runs hostile cases against live servers and measures each one.

A case builds its payload before its server starts (so building never competes
with the server for the CPU), then runs against a live ``python -m service``
while a :class:`MemoryWatch` samples the server's RSS every 100 ms and a
:class:`HealthProbe` times ``/healthz``. Heavy cases get a fresh server each,
so ``VmHWM`` (the kernel's own peak) is theirs alone; cheap ones share one.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.hostile.probe import HealthProbe, MemoryWatch
from tests.helpers.server import LiveServer, proc_status_kib

# The hostile suite's targets, on the 2-core benchmark machine.
TARGET_RSS_MB = 3 * 1024
TARGET_TIME_S = 60.0
TARGET_HEALTHZ_S = 1.0


@dataclass
class Ctx:
    """What a running case has: its server, its watchers and a deadline."""

    server: LiveServer
    watch: MemoryWatch
    probe: HealthProbe
    job_dir: Path
    deadline: float
    started: float = field(default_factory=time.monotonic)

    @property
    def url(self) -> str:
        """The server's base URL."""
        return self.server.url

    def left(self) -> float:
        """Seconds left before the case's deadline (at least 1)."""
        return max(1.0, self.deadline - time.monotonic())

    def request(self, method: str, path: str, **kwargs: Any) -> int:
        """One request on a fresh client; the status, or -1 when no answer came."""
        kwargs.setdefault("timeout", self.left())
        try:
            return httpx.request(method, self.url + path, **kwargs).status_code
        except httpx.HTTPError:
            return -1

    def upload(self, data: bytes, model: str = "footprints", **fields: str) -> httpx.Response:
        """``POST /predict`` of one GeoTIFF with form fields."""
        return httpx.post(
            self.url + "/predict",
            data={"model": model, **fields},
            files={"image": ("scene.tif", data, "image/tiff")},
            timeout=self.left(),
        )

    def job(self, job_id: str) -> dict[str, Any] | None:
        """The job's JSON, or None when the server does not answer it."""
        try:
            resp = httpx.get(f"{self.url}/jobs/{job_id}", timeout=min(10.0, self.left()))
        except httpx.HTTPError:
            return None
        return resp.json() if resp.status_code == 200 else None

    def wait_job(
        self, job_id: str, until: Callable[[dict[str, Any]], bool], limit_s: float
    ) -> dict[str, Any] | None:
        """Poll the job every 0.5 s until ``until(job)`` or ``limit_s``; the last state seen."""
        stop = min(self.deadline, time.monotonic() + limit_s)
        last = None
        while time.monotonic() < stop:
            seen = self.job(job_id)
            if seen is None and self.server.proc.poll() is not None:
                return last
            last = seen or last
            if seen is not None and until(seen):
                return seen
            time.sleep(0.5)
        return last


@dataclass
class Outcome:
    """What a case saw: statuses, whether they were the expected ones, time to answer."""

    statuses: list[str]
    ok: bool
    answer_s: float
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Case:
    """One numbered case of the hostile suite."""

    name: str
    group: str
    what: str
    expected: str
    build: Callable[[], Any]
    run: Callable[[Ctx, Any], Outcome]
    settings: dict[str, str] = field(default_factory=dict)
    fresh: bool = True
    limit_s: float = 180.0


def finished(job: dict[str, Any]) -> bool:
    """A job that will not change any more."""
    return job.get("state") in ("done", "failed", "cancelled")


def statuses_ok(got: Iterable[int], allowed: set[int]) -> bool:
    """Every status is an allowed one."""
    return all(s in allowed for s in got)


def concurrently(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls at the same time on threads; their results in order."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(lambda c: c(), calls))


def server_errors(url: str) -> dict[str, float] | None:
    """Requests the server answered 5xx so far, by status, from ``/metrics``."""
    try:
        text = httpx.get(url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    counts: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("attnserve_requests_total{") and 'status="5' in line:
            status = line.split('status="', 1)[1][:3]
            counts[status] = counts.get(status, 0.0) + float(line.rsplit(" ", 1)[1])
    return counts


def log_problems(log: Path, offset: int) -> list[str]:
    """Tracebacks and unhandled errors the server logged after byte ``offset``."""
    try:
        with log.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    lines = text.splitlines()
    return [
        ln[:200]
        for i, ln in enumerate(lines)
        if "Traceback" in ln or "unhandled error" in ln or (i and "Traceback" in lines[i - 1])
    ][:6]


class Harness:
    """Starts servers for cases, measures them, and keeps each case's figures."""

    def __init__(self, model_dir: Path, cap_mb: float, workdir: Path | None = None) -> None:
        self.model_dir = model_dir
        self.cap_mb = cap_mb
        # On /tmp (the job volume with room): scene partials can take gigabytes.
        self.tmp = Path(tempfile.mkdtemp(prefix="attnserve-hostile-", dir=workdir or "/tmp"))
        self._shared: tuple[LiveServer, MemoryWatch, HealthProbe, Path] | None = None
        # How long the last server took to get ready (a plain start, for comparison).
        self.ready_s = 0.0

    def start(self, settings: dict[str, str], job_dir: Path, log: Path) -> LiveServer:
        """A ready server with these settings and job directory."""
        env = {
            "ATTNSERVE_MODEL_DIR": str(self.model_dir),
            "ATTNSERVE_JOB_DIR": str(job_dir),
            **settings,
        }
        server = LiveServer(env, log)
        try:
            server.wait_ready(120)
        except BaseException:
            server.stop(10)
            raise
        return server

    def _server_for(self, case: Case) -> tuple[LiveServer, MemoryWatch, HealthProbe, Path]:
        if not case.fresh and self._shared is not None:
            return self._shared
        job_dir = self.tmp / f"jobs-{case.name}"
        begun = time.monotonic()
        server = self.start(case.settings, job_dir, self.tmp / f"{case.name}.log")
        self.ready_s = round(time.monotonic() - begun, 1)
        watch = MemoryWatch(server.pid, self.cap_mb, self.tmp).start()
        probe = HealthProbe(server.port).start()
        held = (server, watch, probe, job_dir)
        if not case.fresh:
            self._shared = held
        return held

    def _release(self, held: tuple[LiveServer, MemoryWatch, HealthProbe, Path]) -> None:
        server, watch, probe, job_dir = held
        probe.stop()
        watch.stop()
        server.stop(30)
        shutil.rmtree(job_dir, ignore_errors=True)

    def run(self, case: Case) -> dict[str, Any]:
        """Build, run and measure one case; its figures as JSON."""
        payload = case.build()
        server, watch, probe, job_dir = self._server_for(case)
        held_watch = watch
        log_offset = server.log_path.stat().st_size
        errors_before = server_errors(server.url) or {}
        mark_rss, mark_probe = watch.mark(), probe.mark()
        rss_start = watch.rss_mb()
        ctx = Ctx(server, watch, probe, job_dir, time.monotonic() + case.limit_s)
        started = ctx.started
        try:
            outcome = case.run(ctx, payload)
        except Exception as exc:  # a broken case is reported, not fatal to the suite
            outcome = Outcome([f"harness error: {type(exc).__name__}: {exc}"], False, 0.0)
        took = time.monotonic() - started
        # A case that restarts the server leaves the last one in ctx.
        server, watch, probe = ctx.server, ctx.watch, ctx.probe
        held = (server, watch, probe, job_dir)
        if watch is not held_watch:
            errors_before, mark_rss, mark_probe, log_offset = {}, 0, 0, 0
        hwm = proc_status_kib(server.pid, "VmHWM")
        errors_after = server_errors(server.url)
        result: dict[str, Any] = {
            "group": case.group,
            "what": case.what,
            "expected": case.expected,
            "statuses": outcome.statuses,
            "status_ok": outcome.ok,
            "answer_s": round(outcome.answer_s, 2),
            "case_s": round(took, 1),
            "server_ready_s": self.ready_s,
            "rss_start_mb": rss_start,
            "peak_rss_mb": max(watch.peak_since(mark_rss), outcome.extra.pop("peak_rss_mb", 0)),
            "vm_hwm_mb": None if hwm is None else round(hwm / 1024, 1),
            "vm_hwm_is_process_wide": not case.fresh,
            "rss_end_mb": watch.rss_mb(),
            "healthz": probe.summary(mark_probe),
            "healthz_over_1s": probe.slow(mark_probe, started),
            "killed": watch.killed or outcome.extra.pop("killed", None),
            "server_5xx": _delta(errors_before, errors_after),
            "log_problems": log_problems(server.log_path, log_offset),
            "notes": outcome.notes,
            **outcome.extra,
        }
        result["targets"] = targets(result)
        if case.fresh or watch.killed or server.proc.poll() is not None:
            self._release(held)
            if not case.fresh:
                self._shared = None
        return result

    def close(self) -> None:
        """Stop the shared server; job directories are gone, the servers' logs are kept."""
        if self._shared is not None:
            self._release(self._shared)
            self._shared = None
        print(f"server logs: {self.tmp}", flush=True)


def _delta(before: dict[str, float], after: dict[str, float] | None) -> dict[str, float] | str:
    if after is None:
        return "no /metrics answer (server gone or stalled)"
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0) > 0}


def targets(r: dict[str, Any]) -> dict[str, bool]:
    """Which of the suite's targets the case met."""
    peak = max(r["peak_rss_mb"] or 0, 0 if r["vm_hwm_is_process_wide"] else r["vm_hwm_mb"] or 0)
    five = r["server_5xx"]
    return {
        "status": bool(r["status_ok"]),
        "rss_under_3gb": peak < TARGET_RSS_MB and not r["killed"],
        "under_60s": r["answer_s"] < TARGET_TIME_S,
        "healthz_under_1s": r["healthz"]["max_s"] < TARGET_HEALTHZ_S
        and r["healthz"]["failures"] == 0,
        "no_500": isinstance(five, dict) and not five.get("500") and not r["log_problems"],
    }
