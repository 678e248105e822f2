"""Cases 2 and 3 of the hostile suite: a poison job across restarts, and slow-body clients."""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from bench.hostile import files
from bench.hostile.harness import Case, Ctx, Outcome, finished
from bench.hostile.probe import HealthProbe, MemoryWatch
from tests.helpers.geotiff import geotiff
from tests.helpers.server import REPO, LiveServer

TRICKLERS = 64
NORMAL_CLIENTS = 8
SLOW_RUN_S = 75.0
BYTE_EVERY_S = 5.0
MAX_RESUMES = 1


def _trickle(port: int, stop: float, seen: Counter[str]) -> None:
    """Keep ``TRICKLERS`` connections sending one body byte every 5 s until ``stop``."""
    head = (
        b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 100000\r\n\r\n"
    )
    socks: list[socket.socket] = []
    while time.monotonic() < stop:
        while len(socks) < TRICKLERS:
            try:
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                s.sendall(head)
                socks.append(s)
                seen["opened"] += 1
            except OSError:
                seen["refused"] += 1
                break
        for s in list(socks):
            try:
                s.sendall(b" ")  # JSON may begin with whitespace: a valid, endless prefix
            except OSError:
                seen["closed by server"] += 1
                socks.remove(s)
                s.close()
        wake = min(stop, time.monotonic() + BYTE_EVERY_S)
        while socks and (left := wake - time.monotonic()) > 0:
            readable, _, _ = select.select(socks, [], [], left)
            for s in readable:
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "closed"
                seen[f"answered {status}" if status != "closed" else "closed by server"] += 1
                socks.remove(s)
                s.close()
        if not socks:
            time.sleep(0.1)
    for s in socks:
        s.close()


def _slow_bodies(ctx: Ctx, payload: tuple[bytes, bytes]) -> Outcome:
    tiff, parcels = payload
    stop = time.monotonic() + min(SLOW_RUN_S, ctx.left() - 35)
    trickled: Counter[str] = Counter()
    results: list[tuple[int, float]] = []
    lock = threading.Lock()

    def normal(index: int) -> None:
        with httpx.Client(base_url=ctx.url, timeout=30) as client:
            i = index
            while time.monotonic() < stop:
                i += 1
                started = time.monotonic()
                try:
                    if i % 3 == 0:
                        files_ = {"image": ("a.tif", tiff, "image/tiff")}
                        resp = client.post("/predict", data={"model": "footprints"}, files=files_)
                    elif i % 3 == 1:
                        headers = {"content-type": "application/json"}
                        resp = client.post("/predict", content=parcels, headers=headers)
                    else:
                        resp = client.get("/models")
                    status = resp.status_code
                except httpx.HTTPError:
                    status = -1
                with lock:
                    results.append((status, time.monotonic() - started))

    threads = [threading.Thread(target=_trickle, args=(ctx.server.port, stop, trickled))]
    threads += [threading.Thread(target=normal, args=(i,)) for i in range(NORMAL_CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = Counter(s for s, _ in results)
    lat = np.array([t for _, t in results] or [0.0])
    p99 = float(np.percentile(lat, 99))
    return Outcome(
        [f"normal {s}: {n}" for s, n in sorted(statuses.items())],
        set(statuses) == {200} and p99 < 5.0,
        p99,
        [
            f"{len(results)} normal requests, p50 {np.percentile(lat, 50):.2f} s, "
            f"p99 {p99:.2f} s, max {lat.max():.2f} s",
            "tricklers: " + ", ".join(f"{k} {v}" for k, v in sorted(trickled.items())),
        ],
        {"normal_p99_s": round(p99, 3), "normal_requests": len(results)},
    )


def _has_resume_setting() -> bool:
    return "job_max_resumes" in (REPO / "service" / "config.py").read_text()


def _kill(server: LiveServer) -> None:
    os.kill(server.pid, signal.SIGKILL)
    server.proc.wait(30)
    server.stop()  # closes its log


def _poison(ctx: Ctx, data: bytes | None) -> Outcome:
    if data is None:
        return Outcome(
            ["skipped: no ATTNSERVE_JOB_MAX_RESUMES setting in service/config.py yet"],
            False,
            0.0,
            extra={"skipped": True},
        )
    resp = ctx.upload(data)
    if resp.status_code != 202:
        return Outcome([str(resp.status_code)], False, 0.0, [resp.text[:200]])
    job_id = resp.json()["job_id"]
    running = ctx.wait_job(job_id, lambda j: j.get("state") == "running", 120)
    if not running or running.get("state") != "running":
        return Outcome(["202", f"job:{(running or {}).get('state')}"], False, 0.0, ["never ran"])
    # The crash: SIGKILL, as the kernel's OOM killer would.
    ctx.probe.stop()
    ctx.watch.stop()
    _kill(ctx.server)
    statuses = ["202", "killed while running"]
    ready: list[float] = []
    first = ctx.probe.summary()
    peak, health_max = ctx.watch.peak_since(0), float(first["max_s"])
    health_failures = int(first["failures"])
    job: dict[str, Any] | None = None
    started = time.monotonic()
    for life in range(MAX_RESUMES + 2):
        t0 = time.monotonic()
        server = LiveServer(ctx.server.env, Path(ctx.server.log_path))
        server.wait_ready(90)
        ready.append(round(time.monotonic() - t0, 1))
        ctx.server = server
        ctx.watch = MemoryWatch(server.pid, ctx.watch.cap_kib / 1024, ctx.watch.disk).start()
        ctx.probe = HealthProbe(server.port).start()
        job = ctx.wait_job(job_id, lambda j: j.get("state") != "queued", 60)
        state = (job or {}).get("state")
        statuses.append(f"restart {life + 1}: ready in {ready[-1]} s, job {state}")
        if state == "running" and life < MAX_RESUMES + 1:
            time.sleep(2.0)
            ctx.probe.stop()
            ctx.watch.stop()
            peak = max(peak, ctx.watch.peak_since(0))
            summary = ctx.probe.summary()
            health_max = max(health_max, float(summary["max_s"]))
            health_failures += int(summary["failures"])
            _kill(server)
            statuses.append("killed while running")
            continue
        break
    job = ctx.wait_job(job_id, finished, 30) or job
    state = (job or {}).get("state")
    error = (job or {}).get("error")
    statuses.append(f"job:{state}")
    summary = ctx.probe.summary()
    health = {
        **summary,
        "max_s": max(health_max, float(summary["max_s"])),
        "failures": health_failures + int(summary["failures"]),
    }
    return Outcome(
        statuses,
        state == "failed" and bool(error) and all(r < 30 for r in ready),
        time.monotonic() - started,
        [f"ATTNSERVE_JOB_MAX_RESUMES={MAX_RESUMES}", f"error: {error}"],
        {"ready_s": ready, "peak_rss_mb": peak, "healthz": health},
    )


def slow_body_case() -> Case:
    """Case 3: 64 trickling connections must not starve 8 normal clients."""
    return Case(
        "slow_bodies",
        "3 slow bodies",
        f"{TRICKLERS} connections trickling a body byte every {BYTE_EVERY_S:g} s, with "
        f"{NORMAL_CLIENTS} normal clients, for {SLOW_RUN_S:g} s",
        "normal requests all 200, p99 < 5 s",
        lambda: (geotiff(files.noise(64)), files.parcels_json([1.0, 30.0, 60.0])),
        _slow_bodies,
        limit_s=SLOW_RUN_S + 60,
    )


def poison_case() -> Case:
    """Case 2: a job that kills the server each time it runs ends failed, not looping."""
    return Case(
        "poison_job",
        "2 poison job",
        "a scene job whose server is SIGKILLed while it runs, restart after restart",
        f"each restart ready < 30 s; failed with its reason after {MAX_RESUMES} resume(s)",
        lambda: files.sparse_scene(30000, nodata=None) if _has_resume_setting() else None,
        _poison,
        settings={"ATTNSERVE_JOB_MAX_RESUMES": str(MAX_RESUMES)},
        limit_s=400,
    )
