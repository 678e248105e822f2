"""A real HTTP server on 127.0.0.1 that honours Range, counts connections and bytes, redirects.

Files are served from a directory; ``/redirect?to=<url>`` answers 302 to ``url``.
Each server counts the connections it accepted and the body bytes it sent, so
tests can show that a refused reference never reached it and how little of a
file a windowed read fetched.
"""

from __future__ import annotations

import re
import ssl
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

_RANGE = re.compile(r"bytes=(\d+)-(\d*)")


class RangedServer(ThreadingHTTPServer):
    """Serves ``root``'s files with Range support; counts what it did."""

    daemon_threads = True

    def __init__(self, root: Path, tls: tuple[Path, Path] | None = None) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.socket = context.wrap_socket(self.socket, server_side=True)
            self.scheme = "https"
        self.root = root
        self.connections = 0
        self.sent = 0
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>/`` (``https`` with TLS)."""
        return f"{self.scheme}://127.0.0.1:{self.server_address[1]}/"

    def get_request(self):  # type: ignore[no-untyped-def]
        accepted = super().get_request()
        with self.lock:
            self.connections += 1
        return accepted


class _Handler(BaseHTTPRequestHandler):
    server: RangedServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", parse_qs(parts.query)["to"][0])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        file = self.server.root / parts.path.lstrip("/")
        if not file.is_file() or ".." in parts.path:
            self.send_error(404)
            return
        data = file.read_bytes()
        match = _RANGE.fullmatch(self.headers.get("Range", ""))
        if match is None:
            body, status = data, 200
        else:
            start = int(match[1])
            end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
            body, status = data[start : end + 1], 206
        self.send_response(status)
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{start + len(body) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        with self.server.lock:
            self.server.sent += len(body)


@contextmanager
def ranged_server(root: Path, tls: tuple[Path, Path] | None = None) -> Iterator[RangedServer]:
    """A :class:`RangedServer` of ``root`` running in a thread (``tls``: certificate, key)."""
    server = RangedServer(root, tls)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def self_signed(directory: Path, ip: str = "127.0.0.1") -> tuple[Path, Path]:
    """A certificate for ``ip`` and its key, made by the openssl command."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    command += ["-keyout", str(key), "-out", str(cert), "-subj", f"/CN={ip}"]
    subprocess.run(
        [*command, "-addext", f"subjectAltName=IP:{ip}"],
        check=True,
        capture_output=True,
    )
    return cert, key
