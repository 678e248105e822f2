"""Profiles of the request path: py-spy attached to a live server under steady load.

py-spy samples every thread of the server (event loop, batcher, ``to_thread``
workers) from outside; its collapsed stacks are summarised here as text: the
share of samples per request stage, then the functions with most samples.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from tests.helpers.server import LiveServer

# A sample belongs to the first stage whose pattern appears in its stack (innermost
# frames are checked first), so "inference" wins over the batcher that called it.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("inference (session.run)", ("run (onnxruntime", "_run_bound (service/runtime/session")),
    (
        "job store write (np.save, fsync, meta)",
        ("save (service/jobs/local", "update (service/jobs"),
    ),
    (
        "GeoTIFF decode + checks",
        (
            "read_geotiff",
            "read_open",
            "_image (service/pipeline/intake",
            "_series (service/pipeline/intake",
            "open_geotiff",
        ),
    ),
    ("GeoTIFF encode", ("encode_geotiff", "geotiff (service/pipeline/views")),
    ("statistics", ("statistics (service/pipeline/runner",)),
    ("pad / mask / crop (segmentation)", ("predict (service/runtime/segmentation",)),
    ("series input + validation", ("series_from_json", "validate_json", "check_values")),
    ("response JSON (job_json, orjson)", ("job_json", "render (service/api/responses")),
    ("batcher merge / split", ("_merge (service", "_split (service", "submit (service/runtime")),
    ("multipart parsing", ("multipart", "form (starlette")),
    ("JSON body parse", ("_from_json",)),
    ("HTTP / ASGI / middleware", ("uvicorn", "starlette", "fastapi", "h11", "middleware")),
]


def stage_of(stack: str) -> str:
    """The request stage a collapsed stack belongs to."""
    frames = stack.split(";")
    for frame in reversed(frames):
        for name, patterns in STAGES:
            if any(p in frame for p in patterns):
                return name
    return "other (event loop, threads, idle polling)"


def summarise(raw: Path, title: str, top: int = 30) -> str:
    """A text summary of a py-spy raw (collapsed) profile."""
    stacks: Counter[str] = Counter()
    for line in raw.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if stack and number.isdigit():
            stacks[stack] += int(number)
    total = sum(stacks.values()) or 1
    stages: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for stack, count in stacks.items():
        stages[stage_of(stack)] += count
        frames = stack.split(";")
        own[_short(frames[-1])] += count
        for frame in {_short(f) for f in frames}:
            inclusive[frame] += count
    lines = [f"# {title}", f"samples: {total} (all threads, idle excluded)", "", "## by stage"]
    for name, count in stages.most_common():
        lines.append(f"{100 * count / total:6.1f}%  {name}")
    lines += ["", f"## top {top} functions by own samples"]
    for name, count in own.most_common(top):
        lines.append(f"{100 * count / total:6.1f}%  {name}")
    lines += ["", f"## top {top} service functions by inclusive samples"]
    service = [(n, c) for n, c in inclusive.most_common() if "service/" in n]
    for name, count in service[:top]:
        lines.append(f"{100 * count / total:6.1f}%  {name}")
    return "\n".join(lines) + "\n"


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file path from site-packages or repo)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in where:
            where = where.split(marker, 1)[1]
    return f"{name} ({where})"


def profile_load(
    server: LiveServer,
    request_spec: Path,
    out_raw: Path,
    requests: int,
    concurrency: int = 1,
    rate: int = 200,
    idle: bool = False,
) -> dict[str, Any]:
    """Attach py-spy to ``server`` while the load generator sends ``requests`` requests.

    ``idle`` keeps samples of waiting threads too (a thread blocked in ``fsync``
    counts), so the summary shows where requests wait, not only where CPU goes.
    """
    spy = subprocess.Popen(
        ["py-spy", "record", "--format", "raw", "--rate", str(rate), "--nonblocking",
         *(["--idle"] if idle else []), "-o", str(out_raw), "--pid", str(server.pid)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    time.sleep(1.0)
    load = subprocess.run(
        [sys.executable, "-m", "bench.load", "--url", server.url, "--request", str(request_spec),
         "--concurrency", str(concurrency), "--duration", "0", "--min-requests", str(requests)],
        capture_output=True, text=True, check=True, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    os.kill(spy.pid, signal.SIGINT)
    _, err = spy.communicate(timeout=60)
    if not out_raw.exists():
        raise RuntimeError(f"py-spy wrote no profile: {err.decode()[-500:]}")
    return dict(json.loads(load.stdout))
