"""API keys: ``Authorization: Bearer <key>`` required on every path but the open ones."""

from __future__ import annotations

import hmac
import re

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.errors import error_response
from service.jobs.record import owner_of


class ApiKeyAuth:
    """Requires ``Authorization: Bearer <key>`` on every path but the open ones.

    Keys are compared in constant time against every known key, and the caller's
    owner tag (a hash of the key) is put in the request state so that jobs stay
    private to the key that made them. Keys are never logged.
    """

    OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/viewer"})
    # The viewer's pages and assets hold no data (their script fetches the job
    # with the key the person types in); its data endpoints stay guarded. Assets
    # lie in folders (the vendored map library's) whose names hold no dots.
    OPEN_PAGE = re.compile(
        r"^/viewer/(static/(?:[A-Za-z0-9_-]+/){0,3}[A-Za-z0-9_.-]+|[A-Za-z0-9_-]{1,64})$"
    )

    def __init__(self, app: ASGIApp, keys: list[str]) -> None:
        self.app = app
        self.keys = [k.encode() for k in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in self.OPEN_PATHS or self.OPEN_PAGE.match(path):
            await self.app(scope, receive, send)
            return
        presented = bearer(scope)
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(presented, key)
        if not presented or not matched:
            response = error_response(
                401,
                "unauthorized",
                "a valid API key is required: send Authorization: Bearer <key>",
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["owner"] = owner_of(presented.decode())
        await self.app(scope, receive, send)


def bearer(scope: Scope) -> bytes:
    """The request's Bearer token, or empty bytes."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer":
                return bytes(token.strip())
    return b""
