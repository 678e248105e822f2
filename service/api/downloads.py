"""Downloads of a job's stored files, streamed from the store (single byte ranges included)."""

from __future__ import annotations

import re

import anyio
from starlette.datastructures import Headers
from starlette.responses import RedirectResponse, Response
from starlette.types import Receive, Scope, Send

from service.api.responses import GEOTIFF
from service.jobs.record import JobRecord
from service.jobs.store import JobStore, StoredFile

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` (end exclusive) a Range header asks for; None: the whole file.

    Raises:
        ValueError: a range that starts past the end (a 416).
    """
    match = _RANGE.match((header or "").strip())
    if match is None or match.groups() == ("", ""):
        return None  # absent, several ranges or malformed: the whole file, as RFC 9110 allows
    first, last = match.groups()
    if not first:  # the last ``last`` bytes
        return max(0, size - int(last)), size
    start = int(first)
    end = min(size, int(last) + 1) if last else size
    if start >= size or end <= start:
        raise ValueError("range not satisfiable")
    return start, end


class StoredFileResponse(Response):
    """A job's stored file as a download; the file is closed once sent (or abandoned)."""

    def __init__(
        self,
        stored: StoredFile,
        path: str,
        filename: str,
        media_type: str = GEOTIFF,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.stored = stored
        self.path = path  # the file within the store, ``<job id>/<name>``
        self.status_code = 200
        self.media_type = media_type
        self.background = None
        self.init_headers(headers)
        self.headers.setdefault("content-disposition", f'attachment; filename="{filename}"')
        self.headers["accept-ranges"] = "bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._send(scope, send)
        finally:
            await anyio.to_thread.run_sync(self.stored.close)

    async def _send(self, scope: Scope, send: Send) -> None:
        size = self.stored.size
        headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]
        try:
            asked = byte_range(Headers(scope=scope).get("range"), size)
        except ValueError:
            headers.append((b"content-range", f"bytes */{size}".encode()))
            headers.append((b"content-length", b"0"))
            await send({"type": "http.response.start", "status": 416, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        start, end = asked or (0, size)
        status = 206 if asked is not None else 200
        if asked is not None:
            headers.append((b"content-range", f"bytes {start}-{end - 1}/{size}".encode()))
        headers.append((b"content-length", str(end - start).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if scope.get("method") == "HEAD":
            await send({"type": "http.response.body", "body": b""})
            return
        chunks = self.stored.chunks(start, end)
        while True:
            data = await anyio.to_thread.run_sync(next, chunks, None)
            if data is None:
                break
            await send({"type": "http.response.body", "body": data, "more_body": True})
        await send({"type": "http.response.body", "body": b""})


def file_response(store: JobStore, job: JobRecord, name: str) -> Response:
    """A job's stored file as a download, opened now: a job deleted meanwhile still streams whole.

    Where the store presigns URLs (an object store with ``ATTNSERVE_PRESIGN``), a
    307 redirect to the object instead: its bytes never pass through this server.

    Raises:
        NotFound: the job (or the file) is already gone.
    """
    url = store.presign(job, name)
    if url is not None:
        return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
    stored = store.open_file(job, name)
    return StoredFileResponse(
        stored, f"{job.id}/{name}", f"{job.id}-{name}", headers={"Cache-Control": "no-store"}
    )
