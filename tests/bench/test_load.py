"""The lean load generator reads HTTP/1.1 answers right, whatever their framing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from bench.load import build_request, drive

ANSWERS = [
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: application/json\r\n\r\n{}",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    b"HTTP/1.1 422 Unprocessable Entity\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
]


def test_drive_counts_every_framing_and_reconnects(tmp_path: Path) -> None:
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"model": "crops"}))
    spec = {"kind": "json", "body": str(body)}
    seen: list[bytes] = []
    connections = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                seen.append(head + await reader.readexactly(length))
                answer = ANSWERS[(len(seen) - 1) % len(ANSWERS)]
                writer.write(answer)
                await writer.drain()
                if b"Connection: close" in answer:
                    break
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    async def run() -> dict[str, object]:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            return await drive(f"http://127.0.0.1:{port}", spec, 1, 0.0, 8)

    result = asyncio.run(run())
    assert result["requests"] == 8
    assert result["statuses"] == {"200": 6, "422": 2}
    assert result["errors"] == 2
    assert connections == 2  # the server closed once; the client opened a new connection
    assert all(req.endswith(b'{"model": "crops"}') for req in seen)
    assert b"Content-Type: application/json" in seen[0]


def test_multipart_request_carries_fields_and_file(tmp_path: Path) -> None:
    tile = tmp_path / "tile.tif"
    tile.write_bytes(b"II*\0" + bytes(range(256)))
    spec = {"kind": "multipart", "fields": {"model": "footprints"}, "file": str(tile)}
    request = build_request("127.0.0.1:8000", spec)
    head, _, body = request.partition(b"\r\n\r\n")
    assert b"multipart/form-data; boundary=" in head
    assert int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0]) == len(body)
    assert b'name="model"\r\n\r\nfootprints\r\n' in body
    assert tile.read_bytes() in body
