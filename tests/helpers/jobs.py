"""Scene jobs on a live server: submit uploads, follow a job to its end, download its files."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx

from tests.helpers.server import LiveServer


def submit(server: LiveServer, paths: list[Path], **fields: str) -> dict[str, Any]:
    """POST ``paths`` as one upload with ``fields``; the 202 answer of the job it started."""
    files = [("image", (p.name, p.read_bytes(), "image/tiff")) for p in paths]
    resp = httpx.post(f"{server.url}/predict", data=fields, files=files, timeout=120)
    assert resp.status_code == 202, resp.text
    assert resp.headers["location"] == f"/jobs/{resp.json()['job_id']}"
    return resp.json()


def follow(
    server: LiveServer,
    job_id: str,
    timeout_s: float = 300,
    headers: dict[str, str] | None = None,
) -> tuple[dict[str, Any], list[int]]:
    """Poll a job until it ends: its last answer, and the tiles done at every poll."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        body = httpx.get(f"{server.url}/jobs/{job_id}", headers=headers, timeout=30).json()
        seen.append(body["progress"]["done"])
        if body["state"] in ("done", "failed", "cancelled"):
            return body, seen
        time.sleep(0.2)
    raise TimeoutError(job_id)


def download(server: LiveServer, url: str, out: Path) -> Path:
    """GET a job's file at ``url`` into ``out``."""
    resp = httpx.get(server.url + url, timeout=120)
    assert resp.status_code == 200, resp.text
    out.write_bytes(resp.content)
    return out
